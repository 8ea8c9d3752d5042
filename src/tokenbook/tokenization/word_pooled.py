"""Word-pooled tokenization ("eTok", Thawani et al. 2023, arXiv:2310.11628), and next-word evaluation.

Words. Text is cut at GPT-2's pre-tokenizer boundaries (the regex of `tokenizers`' ByteLevel
pre-tokenizer, the one our BPE learner also uses): a word keeps its leading space (" king"), runs of
letters, of digits and of punctuation are separate words, contractions ("'s", "'t") are words, and
whitespace before a word is left to it ("a  b" -> "a", " ", " b"; "\\n\\n" -> "\\n", "\\n"). A piece
longer than `max_bytes` UTF-8 bytes is cut (at character boundaries) into chunks of at most that
many bytes. `"".join(segment(t)) == t` for every string t.

Model (`WordPooledLM`), three stacks of Llama blocks (`transformers.LlamaModel`, the same block as
the byte and BPE baselines' `LlamaForCausalLM`):

    encoder  per word: [b_1 .. b_L, CLS] -> hidden state at CLS = the word's vector    (n_enc blocks)
    main     over the word vectors of a text: causal, word t's output = state s_t    (n_main blocks)
    decoder  per word: [s_{t-1}, b_1 .. b_L] -> b_1 .. b_L, EOW  (causal, teacher-forced) (n_dec blocks)

The encoder runs on each word alone, so a word's vector depends on its own bytes only (tested);
unlike the paper's bidirectional encoder with CLS first, ours is causal with CLS last: CLS still
attends to every byte of its word. The decoder generates the next word's bytes from the previous
word's state; all words of a text are decoded in parallel in training. The loss is the mean
cross-entropy over every decoder target (bytes and end-of-word), so the model's log-likelihood of a
text is the sum over its words of log p(bytes, EOW | previous words): bits per byte compare it with
byte and BPE models on one scale.

Ids. `tokenbook.train.trainer.train` feeds id sequences; here an id names one word type of the
training stream (`WordVocab`), and the model looks its bytes up in a table (`set_vocab`). The
model never sees the id itself, only the bytes, so it handles any unseen word given as bytes
(`pool`, `next_words`). Id 0 is the empty word, the document separator (a CLS with no bytes).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

N_BYTES = 256
PAD, CLS = 256, 257          # encoder/decoder input ids beyond the bytes
N_IN = 258
EOW = 256                    # decoder output class "end of word"
N_OUT = 257
IGNORE = -100


# ---- words ---------------------------------------------------------------------------------------------
_PRE = None


def pretokenize(text: str) -> list[str]:
    """GPT-2 pre-tokens of `text` (exactly the boundaries of our BPE learner's pre-tokenizer)."""
    global _PRE
    if _PRE is None:
        from tokenizers import pre_tokenizers
        _PRE = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return [text[a:b] for _, (a, b) in _PRE.pre_tokenize_str(text)]


def split_long(piece: str, max_bytes: int) -> list[str]:
    """`piece` cut into chunks of at most `max_bytes` UTF-8 bytes, at character boundaries."""
    if len(piece.encode("utf-8")) <= max_bytes:
        return [piece]
    out, cur, n = [], [], 0
    for ch in piece:
        k = len(ch.encode("utf-8"))
        if n + k > max_bytes and cur:
            out.append("".join(cur))
            cur, n = [], 0
        cur.append(ch)
        n += k
    out.append("".join(cur))
    return out


def segment_flags(text: str, max_bytes: int) -> list[tuple[str, bool]]:
    """(word, whole) pairs: `whole` is False for the chunks of a pre-token longer than `max_bytes`."""
    if max_bytes < 4:
        raise ValueError(f"max_bytes must be >= 4 (one UTF-8 character), got {max_bytes}")
    out = []
    for p in pretokenize(text):
        chunks = split_long(p, max_bytes)
        out.extend((c, len(chunks) == 1) for c in chunks)
    if sum(len(w) for w, _ in out) != len(text):  # the pre-tokenizer covers every character
        raise AssertionError("segmentation lost characters")
    return out


def segment(text: str, max_bytes: int = 16) -> list[str]:
    """The words of `text` (see the module docstring); they join back to `text`."""
    return [w for w, _ in segment_flags(text, max_bytes)]


def word_key(word: str) -> str:
    """What word frequencies count: the word without surrounding whitespace (" King" and "King" are one)."""
    return word.strip() or word


def is_wordlike(word: str) -> bool:
    """True for words with a letter or digit (what the accuracy claims score); False for punctuation/space."""
    return any(ch.isalnum() for ch in word)


def frequency_bucket(count: int, edges: Sequence[int]) -> int:
    """Index i with edges[i] <= count < edges[i+1] (the last bucket is open)."""
    i = int(np.searchsorted(np.asarray(edges), count, side="right")) - 1
    if i < 0:
        raise ValueError(f"count {count} is below the first edge {edges[0]}")
    return i


class WordVocab:
    """Word types of a text stream, id 0 = the empty word (document separator); bytes padded to W."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.words: list[str] = [""]
        self.index: dict[str, int] = {"": 0}

    def __len__(self) -> int:
        return len(self.words)

    def id(self, word: str) -> int:
        i = self.index.get(word)
        if i is None:
            if len(word.encode("utf-8")) > self.max_bytes:
                raise ValueError(f"word {word!r} is longer than {self.max_bytes} bytes: segment it first")
            i = self.index[word] = len(self.words)
            self.words.append(word)
        return i

    def stream(self, texts: Sequence[str], segmented: Sequence[Sequence[str]] | None = None) -> torch.Tensor:
        """One id stream: the separator before each text, then its words (`segmented`: the texts' words,
        when already computed with the same max_bytes)."""
        words = segmented if segmented is not None else [segment(t, self.max_bytes) for t in texts]
        out = []
        for ws in words:
            out.append(0)
            out.extend(self.id(w) for w in ws)
        return torch.tensor(out, dtype=torch.long)

    def table(self) -> tuple[torch.Tensor, torch.Tensor]:
        return byte_table(self.words, self.max_bytes)


def byte_table(words: Sequence[str], max_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([N, max_bytes] byte ids padded with PAD, [N] lengths) for `words`."""
    out = torch.full((len(words), max_bytes), PAD, dtype=torch.long)
    lens = torch.zeros(len(words), dtype=torch.long)
    for i, w in enumerate(words):
        b = w.encode("utf-8")
        if len(b) > max_bytes:
            raise ValueError(f"word {w!r} has {len(b)} bytes > {max_bytes}")
        out[i, :len(b)] = torch.tensor(list(b), dtype=torch.long)
        lens[i] = len(b)
    return out, lens


def length_groups(lengths: torch.Tensor, cuts: Sequence[int] = (3, 6, 10)) -> list[tuple[torch.Tensor, int]]:
    """Indices of the words in each length band (<= 3, 4-6, 7-10, longer bytes) with the band's widest
    length: words are padded only to their band's width (an implementation speed-up, not a method change)."""
    out, lo = [], -1
    for hi in list(cuts) + [int(lengths.max()) if len(lengths) else 0]:
        idx = torch.nonzero((lengths > lo) & (lengths <= hi)).flatten()
        if len(idx):
            out.append((idx, int(lengths[idx].max())))
        lo = max(lo, hi)
    return out


# ---- the model -----------------------------------------------------------------------------------------
@dataclass
class WordPooledConfig:
    hidden_size: int = 128
    intermediate_size: int = 384
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    enc_layers: int = 1
    main_layers: int = 2
    dec_layers: int = 1
    max_word_bytes: int = 16
    max_words: int = 1024       # main LM positions (RoPE: a bound on what it is trained/used for)

    def llama(self, n_layers: int, max_positions: int):
        from transformers import LlamaConfig
        return LlamaConfig(hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
                           num_hidden_layers=n_layers, num_attention_heads=self.num_attention_heads,
                           num_key_value_heads=self.num_key_value_heads, max_position_embeddings=max_positions,
                           vocab_size=1, pad_token_id=None, bos_token_id=None, eos_token_id=None,
                           tie_word_embeddings=False)


class WordPooledLM(nn.Module):
    """Byte encoder -> word-level Llama -> byte decoder (see the module docstring)."""

    def __init__(self, cfg: WordPooledConfig):
        super().__init__()
        from transformers import LlamaModel
        if min(cfg.enc_layers, cfg.main_layers, cfg.dec_layers) < 1:
            raise ValueError(f"every stack needs at least one block: {cfg}")
        self.cfg = cfg
        W, d = cfg.max_word_bytes, cfg.hidden_size
        self.byte_emb = nn.Embedding(N_IN, d)
        self.encoder = LlamaModel(cfg.llama(cfg.enc_layers, W + 1))
        self.main = LlamaModel(cfg.llama(cfg.main_layers, cfg.max_words))
        self.decoder = LlamaModel(cfg.llama(cfg.dec_layers, W + 1))
        self.head = nn.Linear(d, N_OUT, bias=False)
        for m in (self.byte_emb, self.head):
            nn.init.normal_(m.weight, std=0.02)
        self.register_buffer("table", torch.full((1, W), PAD, dtype=torch.long), persistent=False)
        self.register_buffer("lengths", torch.zeros(1, dtype=torch.long), persistent=False)

    def set_vocab(self, vocab: WordVocab) -> None:
        """Bytes of the word types that training ids refer to."""
        if vocab.max_bytes != self.cfg.max_word_bytes:
            raise ValueError(f"vocabulary cut words at {vocab.max_bytes} bytes, the model at {self.cfg.max_word_bytes}")
        t, n = vocab.table()
        self.table, self.lengths = t.to(self.table.device), n.to(self.table.device)

    # -- pieces --
    def pool(self, word_bytes: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[N, W] bytes (PAD-padded), [N] lengths -> [N, d] word vectors (hidden state at CLS)."""
        out = torch.empty(word_bytes.shape[0], self.cfg.hidden_size, device=word_bytes.device)
        for idx, width in length_groups(lengths):  # similar lengths together: little padding
            wb, wl = word_bytes[idx, :width], lengths[idx]
            x = torch.cat([wb, torch.full((len(idx), 1), PAD, dtype=wb.dtype, device=wb.device)], dim=1)
            x[torch.arange(len(idx), device=x.device), wl] = CLS
            h = self.encoder(inputs_embeds=self.byte_emb(x)).last_hidden_state
            out = out.to(h.dtype)
            out[idx] = h[torch.arange(len(idx), device=h.device), wl]
        return out

    def states(self, vectors: torch.Tensor) -> torch.Tensor:
        """[B, T, d] word vectors -> [B, T, d] main-LM states (causal)."""
        return self.main(inputs_embeds=vectors).last_hidden_state

    def decode_logits(self, states: torch.Tensor, word_bytes: torch.Tensor) -> torch.Tensor:
        """[N, d] states, [N, w] target bytes (teacher forcing) -> [N, w+1, N_OUT] logits for b_1..b_w, EOW."""
        x = torch.cat([states[:, None, :], self.byte_emb(word_bytes)], dim=1)
        return self.head(self.decoder(inputs_embeds=x).last_hidden_state)

    def _vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T] word ids -> [B, T, d]: each distinct word is pooled once (its vector depends on its bytes only)."""
        uniq, inv = torch.unique(ids, return_inverse=True)
        vec = self.pool(self.table[uniq], self.lengths[uniq])
        return vec[inv]

    @staticmethod
    def targets(word_bytes: torch.Tensor, lengths: torch.Tensor, width: int) -> torch.Tensor:
        """[N, width+1] decoder targets: bytes, then EOW at position L, IGNORE after."""
        N = word_bytes.shape[0]
        t = torch.full((N, width + 1), IGNORE, dtype=torch.long, device=word_bytes.device)
        t[:, :width] = word_bytes[:, :width]
        pos = torch.arange(width + 1, device=t.device)[None, :]
        t = torch.where(pos < lengths[:, None], t, torch.full_like(t, IGNORE))
        t[torch.arange(N, device=t.device), lengths] = EOW
        return t

    def word_nll(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T] ids -> (nats [B, T-1], targets [B, T-1]) of words 1..T-1 given the words before them."""
        B, T = ids.shape
        h = self.states(self._vectors(ids))[:, :-1].reshape(B * (T - 1), -1)
        tgt_ids = ids[:, 1:].reshape(-1)
        wb, wl = self.table[tgt_ids], self.lengths[tgt_ids]
        nll = torch.zeros(len(tgt_ids), device=h.device)
        for idx, width in length_groups(wl):
            logits = self.decode_logits(h[idx], wb[idx, :width])
            tgt = self.targets(wb[idx], wl[idx], width)
            nll[idx] = F.cross_entropy(logits.float().reshape(-1, N_OUT), tgt.reshape(-1), ignore_index=IGNORE,
                                       reduction="none").view(len(idx), width + 1).sum(-1)
        return nll.view(B, T - 1), (wl + 1).view(B, T - 1)

    def forward(self, input_ids: torch.Tensor, labels=None, **_):
        """The trainer's interface: mean loss per decoder target (every byte and every end-of-word)."""
        nll, n = self.word_nll(input_ids)
        return SimpleNamespace(loss=nll.sum() / n.sum(), logits=None)

    # -- inference --
    @torch.no_grad()
    def greedy_words(self, states: torch.Tensor) -> tuple[list[bytes], list[bool]]:
        """Greedy byte decoding from [N, d] states: (bytes before EOW, finished). A word that has not
        ended after max_word_bytes bytes is returned with finished=False."""
        N, W = states.shape[0], self.cfg.max_word_bytes
        out = torch.full((N, 0), PAD, dtype=torch.long, device=states.device)
        done = torch.zeros(N, dtype=torch.bool, device=states.device)
        for step in range(W + 1):
            nxt = self.decode_logits(states, out)[:, step].argmax(-1)
            done = done | (nxt == EOW)
            if bool(done.all()) or step == W:
                break
            out = torch.cat([out, torch.where(done, torch.full_like(nxt, PAD), nxt)[:, None]], dim=1)
        return [bytes([b for b in row if b < N_BYTES]) for row in out.tolist()], done.tolist()

    @torch.no_grad()
    def context_states(self, contexts: Sequence[Sequence[str]], batch_size: int = 64) -> torch.Tensor:
        """The main-LM state after the last word of each context (a list of words): [N, d]."""
        dev = self.table.device
        out = []
        for b in range(0, len(contexts), batch_size):
            chunk = contexts[b:b + batch_size]
            n = torch.tensor([len(c) for c in chunk], device=dev)
            if int(n.min()) < 1:
                raise ValueError("every context needs at least one word (the separator \"\" at a text start)")
            flat = [w for c in chunk for w in c]
            distinct = sorted(set(flat))
            wb, wl = byte_table(distinct, self.cfg.max_word_bytes)
            vec = self.pool(wb.to(dev), wl.to(dev))
            where = {w: i for i, w in enumerate(distinct)}
            x = torch.zeros(len(chunk), int(n.max()), vec.shape[-1], device=dev, dtype=vec.dtype)
            for r, c in enumerate(chunk):  # right-padded: a causal model's last real state ignores the pads
                x[r, :len(c)] = vec[[where[w] for w in c]]
            h = self.states(x)
            out.append(h[torch.arange(len(chunk), device=dev), n - 1])
        return torch.cat(out)

    @torch.no_grad()
    def next_words(self, contexts: Sequence[Sequence[str]], batch_size: int = 64) -> list[str]:
        """Greedy next word after each context (list of words; start a text with the separator "")."""
        was = self.training
        self.eval()
        s = self.context_states(contexts, batch_size)
        words = []
        for b in range(0, len(s), batch_size):
            got, finished = self.greedy_words(s[b:b + batch_size])
            # an unfinished word ("…") never matches a gold word, as for the token-level models
            words.extend(w.decode("utf-8", errors="replace") + ("" if f else "\u2026") for w, f in zip(got, finished))
        self.train(was)
        return words

    @torch.no_grad()
    def score_stream(self, ids: torch.Tensor, max_words: int) -> np.ndarray:
        """Nats of every word of `ids` (a separator-led stream, ids of the current vocabulary) after the
        first, in back-to-back windows of `max_words` words (each window restarts the context, as
        `evaluation.perplexity.windows` does for token models)."""
        from ..evaluation.perplexity import windows
        was = self.training
        self.eval()
        nll = np.zeros(len(ids))
        for s, e, f in windows(len(ids), max_words):
            word_nats, _ = self.word_nll(ids[s:e][None].to(self.table.device))
            nll[f:e] = word_nats[0, f - s - 1:].float().cpu().numpy()
        self.train(was)
        return nll


def parameter_counts(model: WordPooledLM) -> dict:
    """Parameters per part (the unused 1-row token tables of the Llama stacks are left out)."""
    def count(m):
        return sum(p.numel() for n, p in m.named_parameters() if "embed_tokens" not in n)
    parts = {"byte_embedding": count(model.byte_emb), "encoder": count(model.encoder), "main": count(model.main),
             "decoder": count(model.decoder), "head": count(model.head)}
    parts["total"] = sum(parts.values())
    parts["blocks"] = parts["encoder"] + parts["main"] + parts["decoder"]
    return parts


# ---- compute accounting --------------------------------------------------------------------------------
def block_flops(d: int, ff: int, n_kv_ratio: float = 1.0) -> float:
    """Forward FLOPs of one Llama block's matmuls per position (q, o, k, v projections and the SwiGLU MLP)."""
    return 2.0 * (2 * d * d + 2 * d * d * n_kv_ratio + 3 * d * ff)


def attention_flops(d: int, mean_context: float) -> float:
    """Forward FLOPs per position of scores and weighted sums over `mean_context` keys."""
    return 4.0 * d * mean_context


def lm_forward_flops_per_byte(*, d: int, ff: int, n_layers: int, seq_len: int, bytes_per_token: float,
                              vocab: int, kv_ratio: float = 1.0) -> float:
    """A causal LM over tokens: blocks + causal attention (mean context (T+1)/2) + output layer, per byte."""
    per_token = n_layers * (block_flops(d, ff, kv_ratio) + attention_flops(d, (seq_len + 1) / 2)) + 2.0 * d * vocab
    return per_token / bytes_per_token


def etok_forward_flops_per_byte(cfg: WordPooledConfig, word_lengths: np.ndarray, words_per_window: int,
                                kv_ratio: float = 1.0) -> float:
    """eTok per byte of text, from the real word lengths (padding excluded): encoder and decoder over
    L+1 positions per word, the main LM over one position per word, the byte head over L+1 targets."""
    d, ff = cfg.hidden_size, cfg.intermediate_size
    L = np.asarray(word_lengths, float)
    pos = L + 1
    per_word_local = pos * block_flops(d, ff, kv_ratio) + pos * attention_flops(d, (pos + 1) / 2)
    enc = cfg.enc_layers * per_word_local
    dec = cfg.dec_layers * per_word_local + pos * 2.0 * d * N_OUT
    main = cfg.main_layers * (block_flops(d, ff, kv_ratio) + attention_flops(d, (words_per_window + 1) / 2))
    return float((enc + dec + main).sum() / max(1.0, L.sum()))
