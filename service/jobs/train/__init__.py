"""`prm train`: fine-tune a PRM on stepwise-supervision records with transformers' Trainer.

The only home of training code: `options.py` (every option and its default, torch-free), `data.py`
(records to labelled token ids), `backbone.py` (the model to start from), `scratch.py` (tokenizer and
config of a model made from nothing), `objective.py` (the losses), `run.py` (the Trainer and the output).
"""
