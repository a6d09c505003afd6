"""Tool calling: which templates support it, the grammar that forces a call, and parsing calls from text.

Convention (Llama 3.1's JSON tool calling, also understood from Hermes/Qwen `<tool_call>` tags): the model
answers a call as `{"name": "<function>", "parameters": {...}}` (or a list of them). With `tool_choice`
`required` or a named function the call is produced under a JSON-schema grammar, so it is always well formed;
with `auto` the model decides and a reply that parses as a call to a known function becomes `tool_calls`.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from nim_llm.errors import bad_request
from nim_llm.protocol import ChatCompletionRequest, FunctionCall, NamedToolChoice, ToolCall

_WRAPPERS = re.compile(r"^\s*(?:<\|python_tag\|>|<tool_call>)?\s*(.*?)\s*(?:</tool_call>|<\|eom_id\|>)?\s*$", re.S)


def template_supports_tools(tokenizer: Any) -> bool:
    template = tokenizer.chat_template
    text = template if isinstance(template, str) else json.dumps(template)
    return "tools" in (text or "")


def active_tools(req: ChatCompletionRequest, tokenizer: Any) -> list[dict[str, Any]] | None:
    """The tools to show the model, or None when the request uses none; 400 when the template has no tools."""
    if not req.tools or req.tool_choice == "none":
        return None
    if not template_supports_tools(tokenizer):
        raise bad_request(
            "This model's chat template does not support tools; send the request without `tools`.", param="tools"
        )
    names = {t.function.name for t in req.tools}
    if isinstance(req.tool_choice, NamedToolChoice) and req.tool_choice.function.name not in names:
        raise bad_request(
            f"tool_choice names {req.tool_choice.function.name!r}, which is not in `tools`.", param="tool_choice"
        )
    return [t.model_dump(exclude_none=True) for t in req.tools]


def forced_call_schema(req: ChatCompletionRequest) -> dict[str, Any] | None:
    """The JSON schema of the call when the request forces one (`required` or a named function)."""
    if not req.tools or req.tool_choice in (None, "none", "auto"):
        return None
    if isinstance(req.tool_choice, NamedToolChoice):
        funcs = [t.function for t in req.tools if t.function.name == req.tool_choice.function.name]
    else:
        funcs = [t.function for t in req.tools]
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": f.name}, "parameters": f.parameters},
            "required": ["name", "parameters"],
            "additionalProperties": False,
        }
        for f in funcs
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def parse_tool_calls(text: str, known: set[str]) -> list[ToolCall] | None:
    """Tool calls in `text` when all of it is one call or a list of calls to known functions, else None."""
    match = _WRAPPERS.match(text)
    try:
        value = json.loads(match.group(1) if match else text)
    except ValueError:
        return None
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or item.get("name") not in known:
            return None
        args = item.get("parameters", item.get("arguments", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                return None
        calls.append(
            ToolCall(
                id=f"call_{uuid.uuid4().hex[:24]}", function=FunctionCall(name=item["name"], arguments=json.dumps(args))
            )
        )
    return calls or None
