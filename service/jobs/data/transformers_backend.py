"""A transformers model in this process as a backend: small local models without a server.

Requests from concurrent records are gathered into one batched `generate` (left padding) on a worker
thread, so `--concurrency` is what fills the batches. A request for n samples is its prompt repeated n
times, which lets prompts with different n share a batch.
"""

import asyncio
import logging

from service.jobs.data.backends import BackendError, BackendUnavailable, Messages, Sampling, Usage, continuation_prompt

logger = logging.getLogger(__name__)


class TransformersBackend:
    def __init__(self, model: str, sampling: Sampling, *, device: str, batch_size: int):
        """`batch_size`: sequences per `generate` call (a request for more than that runs alone)."""
        self.model = model
        self.sampling = sampling
        self.usage = Usage()
        self._device = device
        self._batch_size = batch_size
        self._queue: asyncio.Queue[tuple[str, int, asyncio.Future]] = asyncio.Queue()
        self._worker: asyncio.Task | None = None

    async def start(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from service.prm.checkpoint import CheckpointError
        from service.prm.loading import resolve_device

        try:
            device = resolve_device(self._device)  # as `prm serve --device` reads it
        except CheckpointError as error:
            raise BackendUnavailable(str(error)) from None
        try:
            self._tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, self.model, padding_side="left")
            self._lm = await asyncio.to_thread(AutoModelForCausalLM.from_pretrained, self.model, dtype="auto")
        except (OSError, ValueError) as error:
            raise BackendUnavailable(f"cannot load the model {self.model!r}: {error}") from None
        self._lm.to(device).eval()
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._worker = asyncio.create_task(self._serve())

    async def chat(self, messages: Messages, n: int) -> list[str]:
        prompt = self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return await self._generate(prompt, n)

    async def continue_assistant(self, messages: Messages, partial: str, n: int) -> list[str]:
        return await self._generate(continuation_prompt(self._tokenizer, messages, partial), n)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def _generate(self, prompt: str, n: int) -> list[str]:
        future = asyncio.get_running_loop().create_future()
        self.usage.requests += 1
        self.usage.completions_requested += n
        self._queue.put_nowait((prompt, n, future))
        texts = await future
        self.usage.completions_received += len(texts)
        return texts

    async def _serve(self) -> None:
        """Take what is queued (up to the batch size), generate it in one call, hand each request its part."""
        held = None  # the request that did not fit the last batch: first in the next
        while True:
            batch = [held or await self._queue.get()]
            held = None
            rows = batch[0][1]
            while held is None and not self._queue.empty():
                request = self._queue.get_nowait()
                if rows + request[1] > self._batch_size:
                    held = request
                else:
                    batch.append(request)
                    rows += request[1]
            prompts = [prompt for prompt, n, _ in batch for _ in range(n)]
            try:
                texts = await asyncio.to_thread(self._run, prompts)
            except Exception as error:  # out of memory, say: these requests fail, the next batch may not
                logger.exception("generate failed for a batch of %d sequences", len(prompts))
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(BackendError(f"generate failed: {error}"))
                continue
            start = 0
            for _, n, future in batch:
                if not future.done():  # its caller may have been cancelled
                    future.set_result(texts[start : start + n])
                start += n

    def _run(self, prompts: list[str]) -> list[str]:
        import torch

        encoded = self._tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        encoded = encoded.to(self._lm.device)
        sample = self.sampling.temperature > 0
        with torch.inference_mode():
            output = self._lm.generate(
                **encoded,
                do_sample=sample,
                **({"temperature": self.sampling.temperature, "top_p": self.sampling.top_p} if sample else {}),
                max_new_tokens=self.sampling.max_tokens,
                pad_token_id=self._tokenizer.pad_token_id,
            )
        generated = output[:, encoded["input_ids"].shape[1] :]
        self.usage.prompt_tokens += int(encoded["attention_mask"].sum())
        self.usage.completion_tokens += int((generated != self._tokenizer.pad_token_id).sum())
        return self._tokenizer.batch_decode(generated, skip_special_tokens=True)
