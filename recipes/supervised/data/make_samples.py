"""Regenerate the small sample datasets of the supervised recipes (toy sentences written for this project).

    python recipes/supervised/data/make_samples.py

- ``ner_sample.conll``: CoNLL-style NER (token<TAB>tag, blank line between sentences), BIO tags
  for PER, ORG and LOC.
- ``multi_label_sample.jsonl``: short news-like sentences with one or more topic labels.
- ``instructions_sample.jsonl``: prompt/completion pairs (arithmetic, word games, unit changes).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
PEOPLE = [
    "Maria Lindqvist",
    "Tomas Ferreira",
    "Aiko Tanaka",
    "Samuel Okafor",
    "Lena Brandt",
    "Ravi Menon",
    "Nora Quist",
]
ORGS = ["Northwind Bank", "Helios Energy", "the Harbor Council", "Bluefin Labs", "Corvid Airlines", "Atlas Press"]
PLACES = ["Lisbon", "Osaka", "Lagos", "Bergen", "Quebec City", "Valparaiso", "New Delhi"]
TEMPLATES = [
    "{PER} joined {ORG} in {LOC} last spring .",
    "{ORG} opened a new office in {LOC} .",
    "Officials in {LOC} met {PER} on Tuesday .",
    "{PER} said {ORG} would hire more staff .",
    "Shares of {ORG} rose after {PER} spoke in {LOC} .",
    "{PER} and {PER2} travelled from {LOC} to {LOC2} .",
    "The mayor of {LOC} praised {ORG} .",
    "{PER} left {ORG} to start a company .",
]


def tagged(template: str, rng: random.Random) -> tuple[list[str], list[str]]:
    fills = {
        "PER": rng.choice(PEOPLE),
        "PER2": rng.choice(PEOPLE),
        "ORG": rng.choice(ORGS),
        "LOC": rng.choice(PLACES),
        "LOC2": rng.choice(PLACES),
    }
    tokens, tags = [], []
    for word in template.split():
        key = word.strip("{}")
        if word.startswith("{") and key in fills:
            kind = key.rstrip("2")
            parts = fills[key].split()
            tokens += parts
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(parts) - 1)
        else:
            tokens.append(word)
            tags.append("O")
    return tokens, tags


def main() -> None:
    rng = random.Random(0)
    with open(HERE / "ner_sample.conll", "w") as f:
        for _ in range(160):
            tokens, tags = tagged(rng.choice(TEMPLATES), rng)
            f.writelines(f"{t}\t{g}\n" for t, g in zip(tokens, tags))
            f.write("\n")

    topics = {
        "economy": ["prices rose", "the bank cut rates", "exports fell", "wages grew", "markets slid"],
        "sport": [
            "the team won the final",
            "the striker scored twice",
            "the coach resigned",
            "fans filled the stadium",
        ],
        "technology": [
            "a new chip was announced",
            "the app gained users",
            "engineers fixed the network",
            "the robot shipped",
        ],
        "politics": [
            "parliament passed the bill",
            "the minister resigned",
            "voters went to the polls",
            "the senate debated",
        ],
    }
    names = sorted(topics)
    with open(HERE / "multi_label_sample.jsonl", "w") as f:
        for _ in range(240):
            labels = sorted(rng.sample(names, rng.choice([1, 1, 2, 2, 3])))
            clauses = [rng.choice(topics[label]) for label in labels]
            rng.shuffle(clauses)
            text = "Today " + " while ".join(clauses) + "."
            f.write(json.dumps({"text": text, "labels": labels}) + "\n")

    words = ["apple", "river", "garden", "window", "planet", "silver", "candle", "forest", "bridge", "orange"]
    with open(HERE / "instructions_sample.jsonl", "w") as f:
        for _ in range(200):
            kind = rng.choice(["add", "reverse", "upper", "km"])
            if kind == "add":
                a, b = rng.randint(1, 50), rng.randint(1, 50)
                prompt, completion = f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
            elif kind == "reverse":
                w = rng.choice(words)
                prompt, completion = f"Spell the word '{w}' backwards.", f"'{w}' backwards is '{w[::-1]}'."
            elif kind == "upper":
                w = rng.choice(words)
                prompt, completion = f"Write '{w}' in capital letters.", f"{w.upper()}"
            else:
                km = rng.randint(1, 20)
                prompt, completion = (
                    f"How many meters are in {km} kilometers?",
                    f"{km} kilometers are {km * 1000} meters.",
                )
            f.write(
                json.dumps(
                    {
                        "prompt": [{"role": "user", "content": prompt}],
                        "completion": [{"role": "assistant", "content": completion}],
                    }
                )
                + "\n"
            )


if __name__ == "__main__":
    main()
