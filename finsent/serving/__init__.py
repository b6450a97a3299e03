"""`finsent serve`: the OpenAI API shape over any classifier, with micro-batching and client-test tooling."""
