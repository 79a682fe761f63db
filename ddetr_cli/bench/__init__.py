"""Measuring a model: parameters, FLOPs and speed (``model``), the attention op alone (``op``),
with FLOP counting (``flops``), timing (``timing``) and the machine they ran on (``machine``)."""
