"""Encoders: the torch-free registry of sizes (``sizes``) and families (``family``,
``swinv2``, ``vit``), timm builds and weight transfer (``build``), SimMIM (``simmim``)
and FLOP counts (``flops``)."""
