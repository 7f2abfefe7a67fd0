"""Request bodies of the OpenAI-compatible endpoints (pydantic models; they make the OpenAPI schema).

Bounds that OpenAI documents are enforced here, so a bad value is a 400 naming the
field before any work starts. Unknown fields are ignored, as llama-cpp-python's
server does. Sampling options OpenAI lacks (top_k, min_p, repeat_penalty) are
accepted as llama.cpp's server accepts them.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

INT64 = dict(ge=-(2 ** 63), le=2 ** 63 - 1)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_unicode(value: Any, at: str) -> None:
    """ValueError at the first string (or key) holding a lone UTF-16 surrogate: JSON can spell
    one ("\\ud800") but it is no character, and no reply that echoes it can be encoded."""
    stack = [(value, at)]
    while stack:
        v, where = stack.pop()
        if isinstance(v, str):
            m = _LONE_SURROGATE.search(v)
            if m:
                raise ValueError(f"{where} holds a lone UTF-16 surrogate (U+{ord(m.group()):04X}), "
                                 "which is not a character: send valid Unicode")
        elif isinstance(v, dict):
            for k, x in v.items():
                if isinstance(k, str) and _LONE_SURROGATE.search(k):
                    raise ValueError(f"a key in {where} holds a lone UTF-16 surrogate: send valid Unicode")
                stack.append((x, f"{where}.{k}"))
        elif isinstance(v, list):
            stack.extend((x, f"{where}[{i}]") for i, x in enumerate(v))


class _Request(_Body):
    """A whole request body: every string in it is checked for valid Unicode first."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        _check_unicode(data, "body")
        return data


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ToolCallFunction(_Body):
    name: str
    arguments: Union[str, Dict[str, object]] = "{}"


class ToolCall(_Body):
    """A call an assistant message made (a conversation sent back with its history)."""
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Optional[Union[str, List[TextPart]]] = None
    name: Optional[str] = None
    tool_call_id: Optional[str] = None
    tool_calls: Optional[List[ToolCall]] = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Request):
    model: Optional[str] = Field(None, description="the served model's id (GET /v1/models); optional")
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float = Field(0.95, ge=0.0, le=1.0)
    top_k: int = Field(40, ge=0, le=1 << 30)
    min_p: float = Field(0.05, ge=0.0, le=1.0)
    repeat_penalty: float = Field(1.0, gt=0.0, le=100.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stop: Optional[Union[str, List[str]]] = Field(None, description="up to 16 stop strings")
    seed: Optional[int] = Field(None, **INT64)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    logit_bias: Optional[Dict[str, float]] = Field(None, description="token id (as a string) -> bias in [-100, 100]")
    n: int = Field(1, ge=1, le=1, description="only 1 is supported")
    grammar: Optional[str] = Field(None, description="a GBNF grammar the reply must match (llama-server's option)")
    cache_prompt: Optional[bool] = Field(
        None, description="reuse the slot's cached prefix of the prompt (llama-server's option; default: the "
                          "server's --cache-prompt setting). Off: the prompt is evaluated whole, so the answer is "
                          "the one a fresh model gives")
    user: Optional[str] = None


class ChatCompletionRequest(_Sampling):
    messages: List[ChatMessage] = Field(..., min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1, le=1 << 24)
    max_completion_tokens: Optional[int] = Field(None, ge=1, le=1 << 24)
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    response_format: Optional[Dict[str, object]] = None
    tools: Optional[List[Dict[str, object]]] = None
    functions: Optional[List[Dict[str, object]]] = None
    tool_choice: Optional[Union[str, Dict[str, object]]] = None


class CompletionRequest(_Sampling):
    prompt: Union[str, List[str], List[int]] = Field(..., description="a text, a list of one text, or token ids")
    suffix: Optional[str] = None
    max_tokens: Optional[int] = Field(16, ge=1, le=1 << 24)
    echo: bool = False
    logprobs: Optional[int] = Field(None, ge=0, le=5)
    best_of: Optional[int] = Field(None, ge=1, le=1)
    grammar: Optional[str] = Field(None, description="constrain the output: a GBNF (or Lark) grammar (llama-server's)")
    json_schema: Optional[Dict[str, object]] = Field(
        None, description="constrain the output to JSON valid under this schema (llama-server's)")


NonEmpty = Annotated[str, StringConstraints(min_length=1)]


class EmbeddingRequest(_Request):
    input: Union[NonEmpty, Annotated[List[NonEmpty], Field(min_length=1)]] = Field(
        ..., description="a text or a list of texts (none empty)")
    model: Optional[str] = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(None, ge=1)
    user: Optional[str] = None


class TokenizeRequest(_Request):
    content: str
    add_special: bool = False
    with_pieces: bool = False


class DetokenizeRequest(_Request):
    tokens: List[int]
