"""Byte-level BPE training in a child process that Ctrl-C and SIGTERM stop within a second.

Why a child: `tokenizers` trains in Rust on the calling thread, and Python runs signal handlers only
between bytecodes, so while it trains neither Ctrl-C nor SIGTERM is answered. Its training is also
quadratic in the length of a word (text without spaces): one 5 MB prompt kept a run's data preparation at
100 % CPU for over 10 minutes (400 k characters: 9 s here, no AMX). The parent waits on a pipe in short
polls (Python code, so its signal handlers run), and kills the child on the way out, whatever ends the wait.

The child is a fresh interpreter running this file (forking a process that already used `tokenizers`'
thread pool would disable its parallelism, with a warning); it imports only `tokenizers`. The job goes
over its stdin as JSON, the trained tokenizer comes back on its stdout.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile

POLL_S = 0.2  # how often the parent looks up from waiting (and so how soon a signal is answered)


def train_bpe(texts: list[str], vocab_size: int, special_tokens: list[str]) -> str:
    """The trained `tokenizers.Tokenizer` as JSON (`Tokenizer.from_str` rebuilds it), trained in a child."""
    # The job goes in through a file, not a pipe: `communicate(input, timeout)` stops feeding a pipe once a call
    # times out and is retried without the input (CPython registers stdin only when input is given), so a job
    # the child had not read within the first poll (a large one, a loaded machine) left both waiting forever.
    job = tempfile.TemporaryFile()
    job.write(json.dumps({"texts": texts, "vocab_size": vocab_size, "special_tokens": special_tokens}).encode())
    job.seek(0)
    # -P: the child does not put rl/ first on its path (its modules would shadow libraries of the same name)
    child = subprocess.Popen([sys.executable, "-P", __file__], stdin=job, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        while True:
            try:
                out, err = child.communicate(timeout=POLL_S)  # Python-level waiting: signals are answered
                break
            except subprocess.TimeoutExpired:
                pass
    finally:
        job.close()  # also on KeyboardInterrupt (Ctrl-C, or SIGTERM turned into one by the driver)
        if child.poll() is None:
            child.kill()
            child.wait()
    if child.returncode:
        lines = err.decode(errors="replace").strip().splitlines() or [f"exit status {child.returncode}"]
        raise RuntimeError(f"tokenizer training failed: {lines[-1]}")
    return out.decode("utf-8")


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


if __name__ == "__main__":  # the child: a job on stdin, the tokenizer's JSON on stdout
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C reaches the whole group; the parent decides
    job = json.load(sys.stdin)
    result = _train(job["texts"], job["vocab_size"], job["special_tokens"])
    sys.stdout.buffer.write(result.encode("utf-8"))  # bytes: the same in any locale
