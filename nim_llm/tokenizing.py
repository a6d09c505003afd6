"""`POST /tokenize` (vLLM's extension, served at the root as vLLM serves it): count a prompt's tokens without
generating, so a client can fit `max_tokens` into the context before it asks.

Chat messages go through the same templating as `/v1/chat/completions` (`service.chat_prompt`), so `count`
equals that request's `usage.prompt_tokens`. Refusals match the chat endpoint: 503 not ready, 404 unknown model,
400 bad messages or tools.
"""

from __future__ import annotations

import asyncio

from config import Settings
from nim_llm.engine import Engine
from nim_llm.protocol import TokenizeRequest, TokenizeResponse
from nim_llm.service import LoadState, chat_prompt, check_model_name, check_prompt_chars, ready_engine


class TokenizeService:
    def __init__(self, settings: Settings, state: LoadState) -> None:
        self.settings = settings
        self.state = state

    async def tokenize(self, req: TokenizeRequest) -> TokenizeResponse:
        engine = ready_engine(self.settings, self.state)
        if req.model is not None:
            check_model_name(self.settings, self.state, req.model)
        chat = req.to_chat_request(self.settings.llm_served_name) if req.messages is not None else None
        check_prompt_chars(len(req.prompt or "") if chat is None else chat.text_chars, engine)
        # A long prompt takes CPU time to template and encode: off the event loop, as chat requests do.
        ids = await asyncio.to_thread(self._token_ids, req, engine)
        return TokenizeResponse(count=len(ids), max_model_len=engine.max_context, tokens=ids)

    def _token_ids(self, req: TokenizeRequest, engine: Engine) -> list[int]:
        if req.prompt is not None:
            return list(engine.tokenizer(req.prompt, add_special_tokens=req.add_special_tokens)["input_ids"])
        chat = req.to_chat_request(self.settings.llm_served_name)
        ids, _ = chat_prompt(chat, engine.tokenizer, add_generation_prompt=req.add_generation_prompt)
        return ids
