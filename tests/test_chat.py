"""`scratchlm chat` driven through a pipe, as a script would: turns, /clear, /quit, the context limit."""

import subprocess
import sys


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


def test_sampling_options_are_taken(small_model_dir):
    args = ("--temperature", "1.0", "--top-k", "5", "--top-p", "0.9", "--seed", "3")
    first, second = chat(small_model_dir, "hello\n", *args), chat(small_model_dir, "hello\n", *args)
    assert first.returncode == 0 and first.stdout == second.stdout  # seeded


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
