"""Multi-turn text environments for agentic RL (GiGPO): a common interface, built-ins and a name registry."""
