"""`scratchlm chat` driven through a pipe, as a script would (turns, /clear, /quit, the context limit), and
through a real terminal, as a person would (readline, Ctrl-C, /help); the sampling options it is given."""

import contextlib
import os
import platform
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from scratchlm.chat import HELP, continuation, sampling_options


def chat(model_dir, text: str, *flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "scratchlm.cli", "chat", "--model", str(model_dir), "--max-new-tokens", "6"]
    return subprocess.run([*command, *flags], input=text, capture_output=True, text=True, timeout=300)


def test_a_piped_conversation_streams_replies_clears_and_quits(small_model_dir):
    from scratchlm.tokenization import load_tokenizer

    tokenizer, words = load_tokenizer(small_model_dir), ["tell me about the river and the mountains"]
    while len(tokenizer.encode(" ".join(words))) < 300:  # one such turn fits the 512-token context, two do not
        words.append(words[0])
    long_turn = " ".join(words)
    result = chat(
        small_model_dir, f"hello\n{long_turn}\n{long_turn}\n/clear\nhello\n/quit\nnever read\n", "--temperature", "0"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    overflow = "(the conversation is longer than the model's context: /clear to start again)"
    assert overflow in result.stdout  # the history is kept: the second long turn does not fit beside the first
    assert result.stdout.index("(new conversation)") > result.stdout.index(overflow)
    replies = result.stdout.split("assistant> ")[1:]
    assert len(replies) == 3  # hello, the first long turn, hello again; "never read" comes after /quit
    assert replies[0] == replies[2]  # greedy: "hello" after /clear is answered as it was first
    assert "you>" not in result.stdout  # no prompt when stdin is not a terminal
    assert "\r" not in result.stderr  # nor progress bars (loading weights) when stderr is a pipe or a log file


class Terminal:
    """`scratchlm chat` on a pseudo-terminal of its own: what it prints, and keys typed into it."""

    def __init__(self, argv: list[str]):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the terminal is its stdin, stdout and stderr, and Ctrl-C signals it
            # as at a shell, whatever this process ignores: pytest-xdist's workers ignore SIGINT, a disposition
            # exec keeps, and Python then installs no KeyboardInterrupt for Ctrl-C at the prompt
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execve(sys.executable, [sys.executable, "-m", "scratchlm.cli", *argv], {**os.environ, "TERM": "xterm"})
        self.output, self.seen = b"", 0

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def wait_for(self, text: bytes, timeout: float = 120) -> bytes:
        """Everything printed since the last wait, up to and including `text`."""
        deadline = time.monotonic() + timeout
        while text not in self.output[self.seen :]:
            assert time.monotonic() < deadline, f"no {text!r} in {self.output[self.seen :][-2000:]!r}"
            if select.select([self.fd], [], [], 0.1)[0]:
                self.output += os.read(self.fd, 65536)
        end = self.output.index(text, self.seen) + len(text)
        shown, self.seen = self.output[self.seen : end], end
        return shown

    def wait_until_reading_keys(self, timeout: float = 60) -> None:
        """Until readline waits on the terminal (its main thread blocked in pselect6 or read): a Ctrl-C that
        comes after the prompt is printed but before readline waits is lost."""
        waiting = {"x86_64": {"0", "270"}, "aarch64": {"63", "72"}}.get(platform.machine())
        syscall = Path(f"/proc/{self.pid}/syscall")
        if waiting is None or not syscall.exists():
            time.sleep(1)
            return
        deadline = time.monotonic() + timeout
        while syscall.read_text().split()[0] not in waiting:
            assert time.monotonic() < deadline, "chat never waited for a key"
            time.sleep(0.05)

    def exit_code(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.fd], [], [], 0.1)[0]:
                with contextlib.suppress(OSError):  # the child closed the terminal
                    self.output += os.read(self.fd, 65536)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, 9)
        raise AssertionError(f"chat did not exit: {self.output[-2000:]!r}")


def test_at_a_terminal_keys_edit_the_line_ctrl_c_stops_a_reply_and_slash_commands_stay_ours(small_model_dir):
    from scratchlm.tokenization import load_tokenizer

    # A reply budget that fills the context exactly after "hello": one token more in what the model is given
    # (an escape code, /help kept in the conversation) and the turn is refused as too long instead of answered.
    tokenizer = load_tokenizer(small_model_dir)
    turn = [{"role": "user", "content": "hello"}]
    hello = len(tokenizer.apply_chat_template(turn, add_generation_prompt=True, return_dict=False))
    flags = ["--temperature", "0", "--max-new-tokens", str(512 - hello)]
    too_long = b"longer than the model's context"
    left, right = b"\x1b[D", b"\x1b[C"  # the arrow keys, as a terminal sends them
    piped = chat(small_model_dir, "hel\x1b[D\x1b[Clo\n", *flags)
    assert too_long.decode() in piped.stdout  # without readline the escape codes would reach the model

    terminal = Terminal(["chat", "--model", str(small_model_dir), *flags])
    terminal.wait_for(b"you> ")
    terminal.type(b"/help\r")
    shown = terminal.wait_for(b"you> ")
    assert HELP.splitlines()[0].encode() in shown and b"assistant>" not in shown
    terminal.type(b"hel" + left + right + b"lo\r")  # left and right again: the line is "hello"
    terminal.wait_for(b"assistant> ")
    terminal.type(b"\x03")  # Ctrl-C while the reply streams (about 480 tokens: it has not ended)
    shown = terminal.wait_for(b"you> ")
    assert b"(stopped)" in shown and too_long not in terminal.output
    terminal.type(b"/clear\rhello\r")  # the session goes on: a further question is answered in full
    shown = terminal.wait_for(b"assistant> ") + terminal.wait_for(b"you> ", timeout=300)
    assert b"(stopped)" not in shown and too_long not in shown
    # Ctrl-C at the prompt ends the session. Not the instant the prompt appears: that was lost in 1 run of 3 here
    # (readline had printed the prompt but not yet begun to wait for keys); no person types that fast.
    terminal.wait_until_reading_keys()
    terminal.type(b"\x03")
    assert terminal.exit_code() == 0
    assert b"Traceback" not in terminal.output and b"KeyboardInterrupt" not in terminal.output


def test_sampling_options_are_taken(small_model_dir):
    from scratchlm.model.files import load_model

    model, tokenizer = load_model(small_model_dir)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello"}], add_generation_prompt=True, return_tensors="pt", return_dict=False
    )

    def reply(temperature: float, top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> list[int]:
        torch.manual_seed(seed)
        return continuation(model, tokenizer, ids, 12, sampling_options(temperature, top_k, top_p)).tolist()

    greedy = reply(0)
    # Each option alone makes sampling pick the likeliest token; ignored, sampling at temperature 1 from a
    # random model (a near-uniform distribution) would not.
    assert reply(1.0, top_k=1, seed=1) == greedy
    assert reply(1.0, top_p=1e-6, seed=2) == greedy
    assert reply(1e-4, seed=3) == greedy
    assert reply(1.0, seed=4) != greedy and reply(1.0, seed=4) == reply(1.0, seed=4) != reply(1.0, seed=5)
    # The command line hands its flags to the same sampling: top-k 1 is greedy, the default top-k (50) is not.
    argv = ["--temperature", "1.0", "--top-p", "1.0", "--seed", "3"]
    sharp, loose = chat(small_model_dir, "hello\n", *argv, "--top-k", "1"), chat(small_model_dir, "hello\n", *argv)
    greedy_text = tokenizer.decode(greedy[:6], skip_special_tokens=True).strip()
    assert sharp.returncode == 0 and sharp.stdout.split("assistant> ")[1].strip() == greedy_text
    assert loose.stdout.split("assistant> ")[1].strip() != greedy_text


def test_a_model_without_a_chat_template_is_refused(tmp_path, small_model_dir):
    import json
    import shutil

    shutil.copytree(small_model_dir, tmp_path / "model")
    config = tmp_path / "model" / "tokenizer_config.json"
    values = json.loads(config.read_text())
    values.pop("chat_template", None)
    config.write_text(json.dumps(values))
    (tmp_path / "model" / "chat_template.jinja").unlink(missing_ok=True)
    result = chat(tmp_path / "model", "hello\n")
    assert result.returncode == 2 and "has no chat template" in result.stderr


def test_a_model_with_no_chat_training_is_named_as_such(tmp_path, small_model_dir):
    import json
    import shutil

    base = tmp_path / "base"
    shutil.copytree(small_model_dir, base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "training_stage": "pretrain"}))  # as the loop exports it
    result = chat(base, "hello\n/quit\n", "--temperature", "0", "--max-new-tokens", "4")
    assert result.returncode == 0 and "this model has had no chat training" in result.stderr
    assert "no chat training" not in chat(small_model_dir, "hello\n/quit\n", "--max-new-tokens", "4").stderr
