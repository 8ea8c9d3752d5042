"""A byte-level tokenizer: ids 0-2 are <pad>, <bos>, <eos>; byte b is id b + 3 (vocabulary 259).

It implements the small part of the HF tokenizer interface the library uses (`encode`, `decode`,
`__call__` with `return_tensors="pt"`, `len`, the special-token ids, save/load), so evaluation
and `generate` treat it like any other tokenizer.
"""
from __future__ import annotations

import json
from pathlib import Path

SPECIALS = ("<pad>", "<bos>", "<eos>")
OFFSET = len(SPECIALS)


class ByteTokenizer:
    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    pad_token, bos_token, eos_token = SPECIALS
    is_fast = False
    name_or_path = "bytes"

    def __len__(self) -> int:
        return 256 + OFFSET

    @property
    def vocab_size(self) -> int:
        return len(self)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = [b + OFFSET for b in text.encode("utf-8")]
        return [self.bos_token_id] + ids if add_special_tokens else ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        out, buf = [], bytearray()
        for i in ids:
            i = int(i)
            if i >= OFFSET:
                buf.append(i - OFFSET)
            elif not skip_special_tokens:
                out.append(buf.decode("utf-8", errors="replace"))
                buf = bytearray()
                out.append(SPECIALS[i])
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def batch_decode(self, seqs, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(s, skip_special_tokens) for s in seqs]

    def __call__(self, text, add_special_tokens: bool = False, return_tensors: str | None = None, **_):
        import torch
        single = isinstance(text, str)
        ids = [self.encode(t, add_special_tokens) for t in ([text] if single else text)]
        if return_tensors == "pt":
            if len({len(i) for i in ids}) != 1:
                raise ValueError("ByteTokenizer pads nothing: texts of different byte lengths")
            t = torch.tensor(ids, dtype=torch.long)
            return {"input_ids": t, "attention_mask": torch.ones_like(t)}
        ids = ids[0] if single else ids
        mask = [1] * len(ids) if single else [[1] * len(i) for i in ids]
        return {"input_ids": ids, "attention_mask": mask}

    def save_pretrained(self, folder) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "byte_tokenizer.json").write_text(json.dumps({"kind": "bytes", "specials": SPECIALS}))

    @classmethod
    def from_pretrained(cls, folder) -> "ByteTokenizer":
        spec = json.loads((Path(folder) / "byte_tokenizer.json").read_text())
        if spec.get("kind") != "bytes" or tuple(spec["specials"]) != SPECIALS:
            raise ValueError(f"{folder} holds a different byte tokenizer: {spec}")
        return cls()
