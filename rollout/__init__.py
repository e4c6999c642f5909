"""Rollout side: engines that sample from the current policy weights, tasks, environments and rewards.

Nothing here knows about training: an engine generates from the weights it holds and accepts weight
updates by name.
"""
