"""Locust profiles for prm-service, shaped by ProcessBench items.

    locust -f loadtest/locustfile.py --headless -u 32 -r 8 -t 5m -H http://prm:8000 --csv out/rl RL
    locust -f loadtest/locustfile.py --headless -u 16 -r 4 -t 5m -H http://prm:8000 --html out/bon.html BestOfN
    locust -f loadtest/locustfile.py --headless -u 32 -r 8 -t 5m -H http://prm:8000 Mixed

Profiles (user classes): `RL` sends /score_steps batches of --rollouts solutions; `BestOfN` sends /rerank
with --candidates solutions of one problem; `Mixed` does both plus single solutions. Items come from
--data (ProcessBench JSON; the tests' fixture when ../shared is absent). --api-key sets a Bearer key.
"""

import json
import random
from pathlib import Path

from locust import HttpUser, between, events, task

HERE = Path(__file__).parent
DEFAULT_DATA = HERE.parent.parent / "shared/data/processbench/gsm8k.json"
FALLBACK_DATA = HERE.parent / "tests/fixtures/processbench_sample.json"


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--data", default=str(DEFAULT_DATA if DEFAULT_DATA.exists() else FALLBACK_DATA))
    parser.add_argument("--rollouts", type=int, default=16, help="solutions per RL request")
    parser.add_argument("--candidates", type=int, default=8, help="candidates per /rerank request")
    parser.add_argument("--api-key", default="", help="Bearer key, if the server has keys")


ITEMS: list[dict] = []


@events.init.add_listener
def _load(environment, **_) -> None:
    ITEMS.extend(json.loads(Path(environment.parsed_options.data).read_text()))


class _PRMUser(HttpUser):
    abstract = True
    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.rng = random.Random()
        self.rollouts, self.candidates = options.rollouts, options.candidates
        if options.api_key:
            self.client.headers["Authorization"] = f"Bearer {options.api_key}"

    def post(self, path: str, body: dict, name: str) -> None:
        with self.client.post(path, json=body, name=name, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")

    def rl_batch(self) -> None:
        items = self.rng.choices(ITEMS, k=self.rollouts)
        self.post("/score_steps", {"items": [{"problem": i["problem"], "steps": i["steps"]} for i in items]}, "rl")

    def best_of_n(self) -> None:
        problem = self.rng.choice(ITEMS)["problem"]
        candidates = [{"steps": i["steps"]} for i in self.rng.choices(ITEMS, k=self.candidates)]
        self.post("/rerank", {"problem": problem, "candidates": candidates}, "bon")

    def single(self) -> None:
        item = self.rng.choice(ITEMS)
        self.post("/score_steps", {"problem": item["problem"], "steps": item["steps"]}, "single")


class RL(_PRMUser):
    @task
    def rl(self) -> None:
        self.rl_batch()


class BestOfN(_PRMUser):
    @task
    def bon(self) -> None:
        self.best_of_n()


class Mixed(_PRMUser):
    @task(2)
    def rl(self) -> None:
        self.rl_batch()

    @task(1)
    def bon(self) -> None:
        self.best_of_n()

    @task(3)
    def one(self) -> None:
        self.single()
