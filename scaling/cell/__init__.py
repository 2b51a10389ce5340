"""One cell in any process (a Ray trial, a DDP rank, ``mimscale trial``): its context and
errors (``context``), the runner both training phases share (``runner``), pre-training
(``pretrain``), fine-tuning (``finetune``) and the whole cell (``run``). Never imports ray."""
