"""Teachers and labelling: gold / local / OpenAI-compatible teachers, answer cache, cost, compare, label a pool."""
