"""A synthetic fact table: invented cities, the invented countries they lie in, populations.

The closed-book chat tasks ask about these facts, so a model can only answer them by
having learnt the table from the training split. The names are built from syllables that
are rare in real place names, so the facts cannot be known from anywhere else.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

# Syllables chosen to look pronounceable in several languages while avoiding real names.
_ONSETS = ("b", "d", "dr", "f", "g", "k", "kr", "l", "m", "n", "p", "qu", "r", "s",
           "sk", "t", "th", "v", "vr", "z")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou")
_CODAS = ("", "", "", "l", "n", "r", "s", "th", "x")
_COUNTRY_ENDINGS = ("ia", "and", "ovia", "esh", "ara", "istan", "onia", "ury")
_CITY_ENDINGS = ("", "", "burg", "holm", "mir", "ton", "ville", "grad", "port", "wick")

NUM_COUNTRIES = 16
NUM_CITIES = 120
DEFAULT_SEED = 7  # the seed of the whole tiny world (facts and chat tasks)


@dataclasses.dataclass(frozen=True)
class City:
    name: str
    country: str
    population: int


@dataclasses.dataclass(frozen=True)
class FactTable:
    """Countries and cities of the invented world, in a fixed order."""

    seed: int
    countries: tuple[str, ...]
    cities: tuple[City, ...]

    def city(self, name: str) -> City:
        for city in self.cities:
            if city.name == name:
                return city
        raise KeyError(f"unknown city {name!r}; the table has {len(self.cities)} cities, "
                       f"e.g. {[c.name for c in self.cities[:5]]}")

    def to_json(self) -> str:
        """Stable JSON text (keys in a fixed order, one city per line, final newline)."""
        lines = ["{", f'  "seed": {self.seed},',
                 f'  "countries": {json.dumps(list(self.countries), ensure_ascii=False)},',
                 '  "cities": [']
        rows = [
            "    " + json.dumps(dataclasses.asdict(c), ensure_ascii=False)
            for c in self.cities
        ]
        lines.append(",\n".join(rows))
        lines += ["  ]", "}"]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_json(cls, text: str) -> FactTable:
        data = json.loads(text)
        return cls(
            seed=data["seed"],
            countries=tuple(data["countries"]),
            cities=tuple(City(**c) for c in data["cities"]),
        )


def _word(rng: random.Random, syllables: int, ending: str) -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)]
    if ending[:1] in "aeiou":
        # A vowel-initial ending needs a consonant before it ("Vel" + "ovia").
        parts.append(rng.choice(_CODAS[3:]) + ending)
    else:
        parts.append(ending or rng.choice(_CODAS))
    return "".join(parts).capitalize()


def _unique_words(rng: random.Random, count: int, endings: tuple[str, ...],
                  taken: set[str]) -> list[str]:
    words: list[str] = []
    while len(words) < count:
        word = _word(rng, rng.randint(1, 2), rng.choice(endings))
        # Names must differ even ignoring case and must not contain one another, so a
        # question never matches two rows by accident.
        lowered = word.lower()
        if len(word) < 4 or any(lowered in t.lower() or t.lower() in lowered for t in taken):
            continue
        taken.add(word)
        words.append(word)
    return words


def make_fact_table(seed: int = DEFAULT_SEED, num_countries: int = NUM_COUNTRIES,
                    num_cities: int = NUM_CITIES) -> FactTable:
    """Builds the fact table deterministically from `seed`."""
    rng = random.Random(f"tiny-world-facts:{seed}")
    taken: set[str] = set()
    countries = _unique_words(rng, num_countries, _COUNTRY_ENDINGS, taken)
    names = _unique_words(rng, num_cities, _CITY_ENDINGS, taken)
    cities = []
    for i, name in enumerate(names):
        # Every country gets cities; populations are whole thousands between 2k and 3M,
        # log-uniform so small towns and big cities both occur.
        country = countries[i % num_countries]
        population = round(2000 * (1500 ** rng.random()), -3)
        cities.append(City(name=name, country=country, population=int(population)))
    return FactTable(seed=seed, countries=tuple(countries), cities=tuple(cities))


_DEFAULT: FactTable | None = None


def default_fact_table() -> FactTable:
    """The table the committed corpus uses (`data/corpus/facts.json`)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = make_fact_table(DEFAULT_SEED)
    return _DEFAULT


def load_fact_table(path: str | Path) -> FactTable:
    return FactTable.from_json(Path(path).read_text(encoding="utf-8"))
