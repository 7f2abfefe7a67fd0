"""pyllama.cli.chat.ChatSession (the conversation behind `python -m pyllama.chat`) on the fake model."""
import io
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from support.fake_llama import EOS, IM_END, FakeLlama  # noqa: E402

from pyllama.cli.chat import ChatSession, stats_line  # noqa: E402
from pyllama.chat_format import format_chat  # noqa: E402
from pyllama.errors import ContextOverflowError  # noqa: E402

NO_END = {EOS: -100.0, IM_END: -100.0}


def session(n_ctx=200, max_tokens=8, system="sys"):
    fake = FakeLlama(n_ctx=n_ctx, chat_format="chatml", add_bos=False)
    return fake, ChatSession(fake, system=system, max_tokens=max_tokens, temperature=0,
                             logit_bias=NO_END)


def test_replies_accumulate_history_and_stream():
    fake, s = session()
    out = io.StringIO()
    reply, interrupted = s.reply("hello", out)
    assert not interrupted and out.getvalue() == reply
    assert [m["role"] for m in s.messages] == ["system", "user", "assistant"]
    assert fake.last_timings["gen_tokens"] == 7  # 8 sampled, the last never evaluated
    assert "generation 7 tok" in stats_line(fake.last_timings)


def test_old_exchanges_dropped_to_fit_context():
    fake, s = session(n_ctx=120, max_tokens=8)
    for i in range(8):
        s.reply(f"message number {i}", io.StringIO())
        # each prompt left room for the reply: the context never had to shift
        assert fake.shifts == [] and fake.n_tokens <= 120
    assert s.messages[0] == {"role": "system", "content": "sys"}
    assert s.messages[-2]["content"] == "message number 7"
    assert not any(m["content"] == "message number 0" for m in s.messages)


def test_message_too_long_raises_and_history_unchanged():
    fake, s = session(n_ctx=64)
    s.reply("hi", io.StringIO())
    before = list(s.messages)
    with pytest.raises(ContextOverflowError, match="n_ctx=64"):
        s.reply("x" * 200, io.StringIO())
    assert s.messages == before[: len(s.messages)] and s.messages[-1]["role"] in ("system", "assistant")


class InterruptingOut(io.StringIO):
    def __init__(self, after):
        super().__init__()
        self.after = after

    def write(self, text):
        self.after -= 1
        if self.after < 0:
            raise KeyboardInterrupt
        return super().write(text)


def test_ctrl_c_stops_the_reply_and_keeps_the_session_usable():
    fake, s = session(max_tokens=30)
    out = InterruptingOut(after=3)
    reply, interrupted = s.reply("tell me", out)
    assert interrupted and reply == out.getvalue() and len(reply) > 0
    assert s.messages[-1] == {"role": "assistant", "content": reply}
    reply2, interrupted2 = s.reply("again", io.StringIO())
    assert not interrupted2 and len(reply2) > 0
    # the cache is consistent: what is cached is a prefix of the last prompt + reply
    prompt = format_chat(fake, s.messages[:-1]).tokens
    assert fake.input_ids[: len(prompt)] == prompt


def test_reset_and_system():
    _, s = session()
    s.reply("hi", io.StringIO())
    s.reset()
    assert s.messages == [{"role": "system", "content": "sys"}]
    s.reset(system="new")
    assert s.messages == [{"role": "system", "content": "new"}]
    s.reset(system="")
    assert s.messages == []
