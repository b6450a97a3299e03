"""What `finsent serve` accepts, as typed models: a request that does not fit is a 400 with an
OpenAI-shaped error naming the field (never a 500, which clients retry).

Fields the OpenAI API defines but this server ignores (``temperature``, ``max_tokens``, ``seed``...)
are accepted as they are; fields it reads are typed and checked.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


def _encodable(text: str) -> str:
    """Reject text that cannot be written as UTF-8 (a lone surrogate such as "\\ud800" in the JSON)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text holds a character that is not valid Unicode at position {exc.start} "
                         f"(a lone surrogate); send valid UTF-8") from None
    return text


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(_Open):
    type: str = "text"
    text: str | None = None

    @field_validator("text")
    @classmethod
    def _text(cls, value):
        return value if value is None else _encodable(value)


class ChatMessage(_Open):
    role: str
    content: str | list[TextPart] | None = None

    @field_validator("content")
    @classmethod
    def _content(cls, value):
        return _encodable(value) if isinstance(value, str) else value

    def text(self) -> str | None:
        """The message's text: the string content, or its text parts joined."""
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content


class JsonSchema(_Open):
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None


class ChatRequest(_Open):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)


class ClassifyRequest(_Open):
    model: str | None = None
    input: str | list[str]

    @field_validator("input")
    @classmethod
    def _texts(cls, value):
        for text in [value] if isinstance(value, str) else value:
            _encodable(text)
        return value

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class BatchCreate(_Open):
    input_file_id: str
    endpoint: Literal["/v1/chat/completions"]
    completion_window: Literal["24h"] = "24h"
    metadata: dict[str, str] | None = None
