"""Training causal LMs from config, and the house models trained with it.

- `trainer.train(model, tokens, TrainConfig(...))`: the one training loop (resumable, atomic checkpoints).
- `zoo.house_model(name, scale, device)`: house models by name, trained on first use and cached.
- `byte_tokenizer.ByteTokenizer`: UTF-8 bytes + 3 specials, for the byte-level house model.
- `compare.train_lm(tokenizer, train_texts, val_texts, model=..., train=...)`: tiny LMs that differ only
  in their tokenizer, at equal compute (or equal bytes), scored in bits per byte (tokenization chapters).
"""
from .byte_tokenizer import ByteTokenizer  # noqa: F401
from .trainer import TrainConfig, TrainResult, train  # noqa: F401
