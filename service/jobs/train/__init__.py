"""`prm train`: fine-tune a PRM on stepwise-supervision records with transformers' Trainer."""
