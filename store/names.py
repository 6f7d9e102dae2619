"""Fictional Danish-sounding names and OS2mo-style username generation for demo data.

The first names are common Danish given names and the surnames common Danish surnames or
invented compounds; combined at random they describe nobody. Usernames follow the pattern of
OS2mo's AD username generator: a few letters of the given name and the surname, transliterated
to ASCII, then a counter when the short forms are taken. Uniqueness is case-insensitive, as the
store's ``username_key`` enforces.
"""

from __future__ import annotations

FEMALE_NAMES: tuple[str, ...] = (
    "Anne", "Mette", "Kirsten", "Hanne", "Anna", "Helle", "Susanne", "Lene", "Maria", "Marianne",
    "Lone", "Camilla", "Pia", "Louise", "Charlotte", "Bente", "Tina", "Gitte", "Inge", "Karen",
    "Julie", "Emma", "Ida", "Sofie", "Laura", "Freja", "Signe", "Maja", "Cecilie", "Line",
    "Birgitte", "Rikke", "Dorthe", "Malene", "Trine", "Nanna", "Astrid", "Ingrid", "Solveig",
    "Karina", "Sanne", "Jette", "Vibeke", "Tove", "Åse", "Ulla", "Mathilde", "Clara", "Agnes",
    "Ellen", "Grethe", "Søs", "Bodil", "Merete", "Katrine", "Stine", "Lærke", "Josefine",
)
MALE_NAMES: tuple[str, ...] = (
    "Peter", "Jens", "Lars", "Michael", "Henrik", "Thomas", "Søren", "Jan", "Christian",
    "Martin", "Niels", "Anders", "Morten", "Jesper", "Mads", "Rasmus", "Per", "Hans", "Jørgen",
    "Ole", "Kim", "Frederik", "Mikkel", "Kasper", "Jakob", "Simon", "Emil", "Oliver", "William",
    "Lucas", "Magnus", "Noah", "Carl", "Viggo", "Asger", "Bjørn", "Torben", "Flemming", "Erik",
    "Steen", "Bent", "Poul", "Claus", "Allan", "Brian", "Kenneth", "Troels", "Ulrik", "Esben",
    "Aksel", "Gunnar", "Halfdan", "Tage", "Villads", "Bo", "Ib", "Aage", "Kåre",
)
SURNAMES: tuple[str, ...] = (
    "Jensen", "Nielsen", "Hansen", "Pedersen", "Andersen", "Christensen", "Larsen", "Sørensen",
    "Rasmussen", "Jørgensen", "Petersen", "Madsen", "Kristensen", "Olsen", "Thomsen",
    "Christiansen", "Poulsen", "Johansen", "Møller", "Mortensen", "Knudsen", "Jakobsen",
    "Mikkelsen", "Olesen", "Frederiksen", "Laursen", "Henriksen", "Lund", "Holm", "Schmidt",
    "Eriksen", "Kristiansen", "Simonsen", "Clausen", "Svendsen", "Andreasen", "Iversen",
    "Østergaard", "Jeppesen", "Vestergaard", "Nissen", "Lauridsen", "Kjær", "Jespersen",
    "Mogensen", "Skov", "Dam", "Bach", "Bak", "Friis", "Lindberg", "Krogh", "Bøgh",
    "Ravnsholt", "Egebjerg", "Lyngdal", "Birkholm", "Hasselgård", "Mosekær", "Skovgaard",
    "Engholm", "Søndergaard", "Nørgaard", "Kragelund", "Fjordside", "Bækmark", "Ålund",
)

_TRANSLITERATE = str.maketrans({
    "æ": "ae", "ø": "oe", "å": "aa", "ä": "ae", "ö": "oe", "ü": "ue", "é": "e", "è": "e",
})


def ascii_letters(text: str) -> str:
    """Lower-case ASCII letters of ``text``, Danish letters spelled out (ø -> oe)."""
    lowered = text.lower().translate(_TRANSLITERATE)
    return "".join(ch for ch in lowered if "a" <= ch <= "z")


class UsernameGenerator:
    """Allocates unique usernames (case-insensitively) from persons' names.

    Tries, in order, 2+2, 3+1 and 1+3 letters of given name and surname, then the 2+2 form
    with a counter from 2 upwards, the OS2mo ``FFLL``/``FFFL``/``FLLL``/``FFLLX`` pattern.
    """

    def __init__(self, taken: set[str] | None = None) -> None:
        self.taken: set[str] = {name.lower() for name in taken or ()}
        self._next_counter: dict[str, int] = {}

    def allocate(self, given_name: str, surname: str) -> str:
        """A fresh username for this name, recorded as taken."""
        first = ascii_letters(given_name.split()[0]) + "xxx"
        last = ascii_letters(surname.split()[-1]) + "xxx"
        for candidate in (first[:2] + last[:2], first[:3] + last[:1], first[:1] + last[:3]):
            if candidate not in self.taken:
                self.taken.add(candidate)
                return candidate
        base = first[:2] + last[:2]
        counter = self._next_counter.get(base, 2)
        while f"{base}{counter}" in self.taken:
            counter += 1
        self._next_counter[base] = counter + 1
        name = f"{base}{counter}"
        self.taken.add(name)
        return name
