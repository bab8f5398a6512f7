"""What a PRM is: checkpoint loading, input formatting and the scoring forward.

Shared by serving, training and evaluation; knows nothing about HTTP or queues.
"""
