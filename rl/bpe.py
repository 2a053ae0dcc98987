"""Byte-level BPE training in a child process that Ctrl-C and SIGTERM stop within a second.

Why a child: `tokenizers` trains in Rust on the calling thread, and Python runs signal handlers only
between bytecodes, so while it trains neither Ctrl-C nor SIGTERM is answered. Its training is also
quadratic in the length of a word (text without spaces): one 5 MB prompt kept a run's data preparation at
100 % CPU for over 10 minutes (400 k characters: 9 s here, no AMX). The parent waits on a pipe in short
polls (Python code, so its signal handlers run), and kills the child on the way out, whatever ends the wait.

The child is spawned (a fresh interpreter: forking a process that already used `tokenizers`' thread pool
disables its parallelism with a warning) and imports only this module and `tokenizers`.
"""

from __future__ import annotations

import multiprocessing
import signal

POLL_S = 0.2  # how often the parent looks up from waiting (and so how soon a signal is answered)


def train_bpe(texts: list[str], vocab_size: int, special_tokens: list[str]) -> str:
    """The trained `tokenizers.Tokenizer` as JSON (`Tokenizer.from_str` rebuilds it), trained in a child."""
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(send, texts, vocab_size, special_tokens), daemon=True,
                        name="rayzero-bpe")
    child.start()
    send.close()  # ours: only the child's end stays open, so its death reads as EOF
    try:
        while not recv.poll(POLL_S):
            if not child.is_alive() and not recv.poll(0):
                raise RuntimeError(f"tokenizer training stopped without a result (exit code {child.exitcode})")
        try:
            ok, value = recv.recv()
        except EOFError:
            raise RuntimeError(f"tokenizer training stopped without a result (exit code {child.exitcode})") from None
    finally:  # also on KeyboardInterrupt (Ctrl-C, or SIGTERM turned into one by the driver)
        if child.is_alive():
            child.kill()
        child.join()
        recv.close()
    if not ok:
        raise RuntimeError(f"tokenizer training failed: {value}")
    return value


def _child(send, texts: list[str], vocab_size: int, special_tokens: list[str]) -> None:
    # The terminal's Ctrl-C reaches the whole process group; the parent decides (and kills us).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        send.send((True, _train(texts, vocab_size, special_tokens)))
    except Exception as e:  # noqa: BLE001 - sent to the parent, which raises it in one line
        send.send((False, f"{type(e).__name__}: {e}"))


def _train(texts: list[str], vocab_size: int, special_tokens: list[str]) -> str:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    # Digit runs are isolated from their leading space so "16" in "has 16" and in "2+16=18" is the same
    # token; BPE then merges frequent numbers into single tokens.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\d+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok.to_str()
