"""Batches from manifests: manifest reading and bad-image accounting (``manifest``), JPEG
decode and crops (``decode``), the step sampler (``sampler``), SimMIM masks (``masking``),
pre-training / validation batches (``pretrain``) and fine-tuning batches (``finetune``)."""
