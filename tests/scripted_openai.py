"""An OpenAI-compatible server whose answers follow markers in the prompt, so that the data jobs' results
can be asserted exactly.

- Policy (chat without paragraphs): sample s of a prompt (counted across requests) answers the gold given as
  `#gold=X` in the problem if s is even, and a wrong answer if s is odd.
- Continuations (/v1/completions): miss the gold answer if the partial solution contains `[wrong]`; if it
  contains `[shaky]`, hit on even samples and miss on odd ones; hit otherwise.
- Judge (chat with `<paragraph_i>`): boxes the first paragraph containing `[wrong]` or `[judge-wrong]`, else
  -1; `#judge=garbled` in the problem gives an answer without a box, `#judge=99` an index out of range.
- `#fail=429` or `#fail=500` in a prompt fails its first request that way; `#fail=always` fails all of them.
- At most `max_n` choices per request, whatever `n` asks, as servers that ignore `n` do.
"""

import re
from collections import Counter

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

MODEL = "scripted-model"
_GOLD = re.compile(r"#gold=([^\s<]+)")
_PARAGRAPH = re.compile(r"<paragraph_(\d+)>\n(.*?)\n</paragraph_\1>", re.DOTALL)


def scripted_app(max_n: int = 3) -> FastAPI:
    app = FastAPI()
    app.state.log = []  # (route, n asked, choices returned) per answered request
    samples: Counter[str] = Counter()
    attempts: Counter[str] = Counter()

    def failure(prompt: str) -> JSONResponse | None:
        attempts[prompt] += 1
        if "#fail=always" in prompt or ("#fail=500" in prompt and attempts[prompt] == 1):
            return JSONResponse({"error": "scripted failure"}, status_code=500)
        if "#fail=429" in prompt and attempts[prompt] == 1:
            return JSONResponse({"error": "slow down"}, status_code=429, headers={"Retry-After": "0"})
        return None

    def answer(route: str, prompt: str, n: int, reply) -> dict:
        texts = []
        for _ in range(min(n, max_n)):
            texts.append(reply(samples[prompt]))
            samples[prompt] += 1
        app.state.log.append((route, n, len(texts)))
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": sum(len(t.split()) for t in texts)}
        return {"texts": texts, "usage": usage}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": MODEL, "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        if (failed := failure(prompt)) is not None:
            return failed
        if "<paragraph_0>" in prompt:
            result = answer("judge", prompt, body.get("n", 1), lambda sample: _verdict(prompt))
        else:
            result = answer("policy", prompt, body.get("n", 1), lambda sample: _solution(prompt, sample))
        choices = [{"index": i, "message": {"role": "assistant", "content": t}} for i, t in enumerate(result["texts"])]
        return {"object": "chat.completion", "choices": choices, "usage": result["usage"]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        prompt = body["prompt"]
        if (failed := failure(prompt)) is not None:
            return failed
        gold = _GOLD.search(prompt)[1]
        partial = prompt.rsplit("<|im_start|>assistant\n", 1)[1]

        def reply(sample: int) -> str:
            hit = "[wrong]" not in partial and ("[shaky]" not in partial or sample % 2 == 0)
            return f"Hence \\boxed{{{gold if hit else -999}}}."

        result = answer("continue", prompt, body.get("n", 1), reply)
        choices = [{"index": i, "text": text} for i, text in enumerate(result["texts"])]
        return {"object": "text_completion", "choices": choices, "usage": result["usage"]}

    return app


def _solution(prompt: str, sample: int) -> str:
    answer = _GOLD.search(prompt)[1] if sample % 2 == 0 else "x"
    return f"First step.\n\nSecond step.\n\nSo the answer is \\boxed{{{answer}}}."


def _verdict(prompt: str) -> str:
    if "#judge=garbled" in prompt:
        return "Every paragraph looks fine to me, I think."
    if "#judge=99" in prompt:
        return "The error is in \\boxed{99}."
    for index, text in _PARAGRAPH.findall(prompt):
        if "[wrong]" in text or "[judge-wrong]" in text:
            return f"Paragraph {index} is wrong. \\boxed{{{index}}}"
    return "All paragraphs are correct. \\boxed{-1}"
