"""The paper's data recipe as jobs: sample a policy's solutions, label their steps two ways, keep the consensus.

`prm generate` -> responses, `prm annotate mc` and `prm annotate judge` -> two labellings of the same
responses, `prm filter consensus` -> TRL stepwise records where both labellings agree
(arXiv 2501.07301, "The Lessons of Developing Process Reward Models in Mathematical Reasoning").
"""
