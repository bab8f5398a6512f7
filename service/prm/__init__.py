"""What a PRM is: input formatting, checkpoint finding and loading, the served model and its forward.

Shared by serving, training and evaluation; knows nothing about HTTP, queues or training losses.
`formatting.py` is the model card's conversation; `checkpoint.py` finds and checks one without torch;
`loading.py` puts it on a device; `model.py` is the checkpoint's class; `packing.py` lays a batch out in one
row, `forward.py` runs the model over it and `attention.py` attends within it; `scorer.py` turns packed
batches into scores.
"""
