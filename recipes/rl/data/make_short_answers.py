"""Write the short-answer prompt sets: RL training, held-out evaluation, and a disjoint SFT warm-start set.

    python recipes/rl/data/make_short_answers.py     # rewrites short_answers_{train,heldout,sft_pool}.jsonl

Three kinds of question (capitals, additions, simple facts) with every accepted answer. The held-out set is
a fixed, seeded pick of 20 questions of each kind; of the rest, 104 are the RL prompts and 60 a pool from
which make_sft_pairs.py builds the SFT warm-start pairs (so SFT, RL and held-out share no question).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
# The answer goes on its own line after "Answer:" (exact_match reads the text after it). A 135M model retrieves
# a fact through its sentence ("The capital of Spain is Madrid."): asked for the bare word as its first token,
# it ranks the right first token ~27th (median over the held-out set), so the format keeps the sentence.
ONE_WORD = "Give a one-word answer after 'Answer:'."
NUMBER = "Give the number after 'Answer:'."
WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen twenty").split()

CAPITALS = {
    "France": "Paris", "Spain": "Madrid", "Germany": "Berlin", "Italy": "Rome", "Portugal": "Lisbon",
    "Ireland": "Dublin", "Poland": "Warsaw", "Russia": "Moscow", "Greece": "Athens", "Kenya": "Nairobi",
    "Finland": "Helsinki", "Japan": "Tokyo", "Canada": "Ottawa", "Norway": "Oslo", "Austria": "Vienna",
    "China": "Beijing", "Belgium": "Brussels", "Egypt": "Cairo", "Sweden": "Stockholm", "Denmark": "Copenhagen",
    "England": "London", "Peru": "Lima", "Cuba": "Havana", "Thailand": "Bangkok", "Hungary": "Budapest",
    "the Czech Republic": "Prague", "the Netherlands": "Amsterdam", "Switzerland": "Bern", "Chile": "Santiago",
    "South Korea": "Seoul", "Vietnam": "Hanoi", "Indonesia": "Jakarta", "the Philippines": "Manila",
    "Turkey": "Ankara", "Iran": "Tehran", "Iraq": "Baghdad", "Syria": "Damascus", "Lebanon": "Beirut",
    "Saudi Arabia": "Riyadh", "Pakistan": "Islamabad", "Afghanistan": "Kabul", "Bangladesh": "Dhaka",
    "Nepal": "Kathmandu", "Australia": "Canberra", "New Zealand": "Wellington", "Venezuela": "Caracas",
    "Ecuador": "Quito", "Uruguay": "Montevideo", "Nigeria": "Abuja", "Ghana": "Accra", "Morocco": "Rabat",
    "Algeria": "Algiers", "Tunisia": "Tunis", "Senegal": "Dakar", "Uganda": "Kampala", "Zimbabwe": "Harare",
    "Scotland": "Edinburgh", "Wales": "Cardiff", "Iceland": "Reykjavik", "Estonia": "Tallinn", "Latvia": "Riga",
    "Lithuania": "Vilnius", "Romania": "Bucharest", "Bulgaria": "Sofia", "Serbia": "Belgrade",
    "Croatia": "Zagreb", "Slovakia": "Bratislava", "Jamaica": "Kingston", "Qatar": "Doha", "Jordan": "Amman",
    "Sudan": "Khartoum", "Libya": "Tripoli", "Somalia": "Mogadishu", "Angola": "Luanda", "Zambia": "Lusaka",
    "Rwanda": "Kigali", "Cyprus": "Nicosia", "Malta": "Valletta", "Albania": "Tirana", "Georgia": "Tbilisi",
    "Armenia": "Yerevan", "Azerbaijan": "Baku", "Uzbekistan": "Tashkent", "North Korea": "Pyongyang",
    "Taiwan": "Taipei",
}
ALSO = {"Reykjavik": ["Reykjavík"], "Bogota": ["Bogotá"]}
# (question, accepted answers)
FACTS = [
    ("How many legs does a dog have?", ["4", "four"]), ("How many legs does a spider have?", ["8", "eight"]),
    ("How many legs does an insect have?", ["6", "six"]), ("How many legs does a bird have?", ["2", "two"]),
    ("How many months are in a year?", ["12", "twelve"]), ("How many days are in a week?", ["7", "seven"]),
    ("How many hours are in a day?", ["24", "twenty-four", "twenty four"]),
    ("How many sides does a triangle have?", ["3", "three"]), ("How many sides does a square have?", ["4", "four"]),
    ("How many sides does a hexagon have?", ["6", "six"]), ("How many sides does an octagon have?", ["8", "eight"]),
    ("How many sides does a pentagon have?", ["5", "five"]), ("How many wheels does a bicycle have?", ["2", "two"]),
    ("How many wheels does a tricycle have?", ["3", "three"]), ("How many continents are there?", ["7", "seven"]),
    ("What color is the sky on a clear day?", ["blue"]), ("What color is grass?", ["green"]),
    ("What color is snow?", ["white"]), ("What color is a ripe banana?", ["yellow"]),
    ("What color is coal?", ["black"]), ("What color is blood?", ["red"]),
    ("What is the opposite of up?", ["down"]), ("What is the opposite of day?", ["night"]),
    ("What is the opposite of hot?", ["cold"]), ("What is the opposite of big?", ["small", "little"]),
    ("What is the opposite of left?", ["right"]), ("What is the opposite of fast?", ["slow"]),
    ("What is the opposite of open?", ["closed", "shut"]), ("What is the opposite of wet?", ["dry"]),
    ("Which animal says moo?", ["cow", "cows"]), ("Which animal says meow?", ["cat", "cats"]),
    ("Which animal says oink?", ["pig", "pigs"]), ("Which animal says quack?", ["duck", "ducks"]),
    ("Which animal says woof?", ["dog", "dogs"]), ("Which animal says neigh?", ["horse", "horses"]),
    ("What is frozen water called?", ["ice"]), ("What is the largest planet in our solar system?", ["Jupiter"]),
    ("Which planet is called the red planet?", ["Mars"]), ("Which planet do we live on?", ["Earth"]),
    ("What is the largest ocean on Earth?", ["Pacific"]), ("What do bees make?", ["honey"]),
    ("What is a baby cat called?", ["kitten"]), ("What is a baby dog called?", ["puppy", "pup"]),
    ("What is a baby sheep called?", ["lamb"]), ("What is a baby cow called?", ["calf"]),
    ("What gas do humans need to breathe?", ["oxygen"]), ("Which star is closest to Earth?", ["Sun"]),
    ("What is the chemical formula H2O better known as?", ["water"]),
    ("At how many degrees Celsius does water freeze?", ["0", "zero"]),
    ("At how many degrees Celsius does water boil?", ["100", "hundred", "one hundred"]),
    ("What do caterpillars turn into?", ["butterflies", "butterfly", "moths", "moth"]),
    ("What is the first letter of the English alphabet?", ["A"]),
    ("Which season comes after winter?", ["spring"]), ("Which season comes after summer?", ["autumn", "fall"]),
    ("Which month comes after January?", ["February"]), ("Which day comes after Monday?", ["Tuesday"]),
    ("Which day comes after Friday?", ["Saturday"]), ("Which month comes before December?", ["November"]),
]
def _row(question: str, answers: list[str], kind: str, suffix: str = ONE_WORD) -> dict:
    return {"prompt": f"{question} {suffix}", "answer": answers, "kind": kind}


def rl_rows() -> list[dict]:
    rows = [_row(f"What is the capital of {country}?", [city, *ALSO.get(city, [])], "capital")
            for country, city in CAPITALS.items()]
    rows += [_row(f"What is {a} plus {b}?", [str(a + b), WORDS[a + b]], "addition", NUMBER)
             for a in range(1, 10) for b in range(1, 10)]
    rows += [_row(q, answers, "fact") for q, answers in FACTS]
    return rows


def main() -> None:
    rows = rl_rows()
    rng = random.Random(42)
    heldout: list[dict] = []
    for kind in ("capital", "addition", "fact"):
        heldout += rng.sample([r for r in rows if r["kind"] == kind], 20)
    rest = [r for r in rows if r not in heldout]
    rng.shuffle(rest)
    # The SFT pool is cut from the RL questions before RL sees them: make_sft_pairs.py keeps those the untrained
    # policy already answers right (in a sentence), so a warm start teaches the format, not new facts.
    train, pool = rest[:104], rest[104:]
    for name, part in (("train", train), ("heldout", heldout), ("sft_pool", pool)):
        (HERE / f"short_answers_{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
        print(f"short_answers_{name}.jsonl: {len(part)} rows")


if __name__ == "__main__":
    main()
