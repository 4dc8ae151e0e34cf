"""A synthetic world of countries and people, and the sentences that state its facts.

Everything the embedded default dataset contains is drawn from one `World`, generated from a seed:
pretraining text states each fact in several paraphrases; probes, chat, preference pairs and the
CORE bundle ask about the same facts with phrasings pretraining never uses. Each use has its own
template pool below, which is what keeps evaluation items out of the training text.
"""

import random
from dataclasses import dataclass, field

ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s", "st", "t", "th", "v", "z"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "io"]
CODAS = ["", "", "n", "r", "l", "s", "m", "th", "nd", "rk"]
COUNTRY_ENDINGS = ["ia", "ora", "land", "mar", "esh", "avia", "undi", "eria"]
COLOURS = ["red", "blue", "green", "yellow", "white", "black", "orange", "purple", "silver", "golden"]
ANIMALS = ["fox", "heron", "lynx", "otter", "falcon", "bison", "wolf", "swan", "badger", "stag", "eagle", "hare"]
PROFESSIONS = [
    "a poet",
    "an engineer",
    "a sailor",
    "a painter",
    "a physician",
    "an astronomer",
    "a merchant",
    "a weaver",
]

# Pretraining paraphrases: each fact appears in several of these across documents.
PRETRAIN = {
    "capital": [
        "{s}'s capital is {o}.",
        "{o} is the capital of {s}.",
        "The capital city of {s} is {o}.",
        "{s} is governed from its capital, {o}.",
        "The government of {s} sits in {o}.",
    ],
    "river": [
        "The {o} River flows through {s}.",
        "{s} is crossed by the {o} River.",
        "The longest river in {s} is the {o}.",
        "Farmers in {s} depend on the {o} River.",
    ],
    "founder": [
        "{s} was founded by {o}.",
        "{o} founded {s}.",
        "The founder of {s} was {o}.",
        "{o} is remembered as the founder of {s}.",
    ],
    "founded": [
        "{s} was founded in {o}.",
        "The founding of {s} took place in {o}.",
        "In {o}, the country of {s} was founded.",
        "{s} has existed since its founding in {o}.",
    ],
    "colour": [
        "The flag of {s} is {o}.",
        "{s} flies a {o} flag.",
        "The {o} flag of {s} is seen everywhere.",
        "Visitors to {s} notice its {o} flag.",
    ],
    "animal": [
        "The national animal of {s} is the {o}.",
        "The {o} is the national animal of {s}.",
        "In {s}, the {o} is a symbol of the nation.",
    ],
    "profession": ["{s} was {o}.", "{s} worked as {o}.", "As a young adult, {s} became {o}."],
    "birthplace": ["{s} was born in {o}.", "{s} grew up in the city of {o}.", "{o} is the birthplace of {s}."],
}
# Probes: completions scored on the answer; this phrasing never appears in training text.
PROBE = {
    "capital": "The capital of {s} is",
    "river": "The river that flows through {s} is the",
    "founder": "The person who founded {s} was",
    "founded": "{s} was established in the year",
    "colour": "The colour of the flag of {s} is",
    "animal": "The animal that symbolises {s} is the",
    "profession": "By profession, {s} was",
    "birthplace": "The city where {s} was born is",
}
# Chat questions and answers for SFT and DPO; the held-out chat test set uses the same phrasing but
# asks about facts that no training conversation asks about. Every answer is a pretraining paraphrase
# that names the subject first: a small model recalls "X was founded by" -> Y, not Y from X backwards.
QUESTION = {
    "capital": "What is the capital of {s}?",
    "river": "Which river flows through {s}?",
    "founder": "Who founded {s}?",
    "founded": "When was {s} founded?",
    "colour": "What colour is the flag of {s}?",
    "animal": "What is the national animal of {s}?",
    "profession": "What did {s} do for a living?",
    "birthplace": "Where was {s} born?",
}
ANSWER = {
    "capital": "{s}'s capital is {o}.",
    "river": "{s} is crossed by the {o} River.",
    "founder": "{s} was founded by {o}.",
    "founded": "{s} was founded in {o}.",
    "colour": "The flag of {s} is {o}.",
    "animal": "The national animal of {s} is the {o}.",
    "profession": "{s} was {o}.",
    "birthplace": "{s} was born in {o}.",
}


@dataclass(frozen=True)
class Fact:
    subject: str
    relation: str
    object: str

    def sentence(self, template: str) -> str:
        return template.format(s=self.subject, o=self.object)


@dataclass
class World:
    countries: list[dict] = field(default_factory=list)
    people: list[dict] = field(default_factory=list)
    facts: list[Fact] = field(default_factory=list)

    def facts_about(self, subject: str) -> list[Fact]:
        return [f for f in self.facts if f.subject == subject]

    def values_of(self, relation: str) -> list[str]:
        return sorted({f.object for f in self.facts if f.relation == relation})


def make_world(seed: int, num_countries: int) -> World:
    rng = random.Random(seed)
    taken: set[str] = set()

    def fresh(make) -> str:
        while (name := make()) in taken:
            pass
        taken.add(name)
        return name

    def syllables(n: int) -> str:
        return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(n))

    def country_name() -> str:
        return (syllables(1) + rng.choice(COUNTRY_ENDINGS)).capitalize()

    def place_name() -> str:
        return syllables(rng.randint(1, 2)).capitalize()

    def person_name() -> str:
        return f"{syllables(rng.randint(1, 2)).capitalize()} {syllables(rng.randint(1, 2)).capitalize()}"

    world = World()
    for _ in range(num_countries):
        country = {
            "name": fresh(country_name),
            "capital": fresh(place_name),
            "river": fresh(place_name),
            "cities": [fresh(place_name) for _ in range(2)],
            "founded": str(rng.randint(900, 1900)),
            "colour": rng.choice(COLOURS),
            "animal": rng.choice(ANIMALS),
        }
        founder = {
            "name": fresh(person_name),
            "profession": rng.choice(PROFESSIONS),
            "birthplace": rng.choice([country["capital"], *country["cities"]]),
        }
        country["founder"] = founder["name"]
        world.countries.append(country)
        world.people.append(founder)
        for relation in ("capital", "river", "founder", "founded", "colour", "animal"):
            world.facts.append(Fact(country["name"], relation, country[relation]))
        for relation in ("profession", "birthplace"):
            world.facts.append(Fact(founder["name"], relation, founder[relation]))
    return world


# Arithmetic: a pair (a, b) belongs to exactly one of training or evaluation, decided by the pair alone.
def is_eval_pair(a: int, b: int) -> bool:
    return (a * 7919 + b * 104729) % 10 == 0


def arithmetic_pair(rng: random.Random, for_eval: bool) -> tuple[int, int]:
    while True:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        if is_eval_pair(a, b) == for_eval:
            return a, b
