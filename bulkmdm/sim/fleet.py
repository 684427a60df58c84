"""A deterministic fake Swedish school district, for any simulator to seed from.

Every generator takes a ``seed`` and returns the same data for the same seed
on every machine and Python version (``random.Random`` seeded with a string
is stable), so tests and benchmarks can rely on it. Generators draw from
independent streams (``_rng(seed, "people")`` ...), so asking for more
devices does not change the people, and vice versa.

    >>> people(2, seed=1)[0].email            # doctest: +SKIP
    'elsa.lindqvist@skola.se'
    >>> serials(1, seed=1)                    # doctest: +SKIP
    ['F9XKQ2M7HD4R']
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, UTC

#: the e-mail domain of every generated person
DOMAIN = "skola.se"
#: the municipality that owns the schools (users' ``company``)
MUNICIPALITY = "Norrby kommun"

SCHOOLS = ("Norra gymnasiet", "Björkskolan", "Ekbackens skola", "Södra skolan")
CLASSES = ("Klass 7A", "Klass 7B", "Klass 8A", "Klass 8B", "Klass 9A", "Klass 9B")
STAFF_GROUPS = ("Lärare", "Administration")

FIRST_NAMES = (
    "Åsa",
    "Björn",
    "Märta",
    "Göran",
    "Linnéa",
    "Sölve",
    "Ebba",
    "Elsa",
    "Alice",
    "Maja",
    "Wilma",
    "Alma",
    "Saga",
    "Astrid",
    "Signe",
    "Agnes",
    "Ella",
    "Freja",
    "Stina",
    "Ylva",
    "Ingrid",
    "Karin",
    "Tove",
    "Märit",
    "Hugo",
    "Oscar",
    "Lucas",
    "Elias",
    "William",
    "Liam",
    "Noah",
    "Adam",
    "Nils",
    "Olle",
    "Måns",
    "Sixten",
    "Axel",
    "Vilgot",
    "Ludvig",
    "Gösta",
    "Örjan",
    "Jöns",
    "Pär",
    "Anders",
    "Lars",
    "Håkan",
    "Kim",
    "Sam",
)
LAST_NAMES = (
    "Åberg",
    "Öberg",
    "Bäckström",
    "Löfgren",
    "Söderström",
    "Sjöberg",
    "Ström",
    "Nyström",
    "Hägglund",
    "Lindqvist",
    "Johansson",
    "Karlsson",
    "Nilsson",
    "Eriksson",
    "Andersson",
    "Pettersson",
    "Håkansson",
    "Östlund",
    "Ängström",
    "Lundgren",
    "Berglund",
    "Sandström",
    "Forsberg",
    "Holmqvist",
    "Jönsson",
    "Ekström",
    "Sundén",
    "Wikström",
    "Björklund",
    "Dahlén",
    "Engström",
    "Falk",
    "Gustafsson",
    "Hedlund",
    "Isaksson",
    "Jakobsson",
    "Källström",
    "Lindahl",
    "Malmström",
    "Norén",
    "Persson",
    "Rönnqvist",
    "Sjödin",
)

TAG_NAMES = (
    "Elev-iPad",
    "Lärare",
    "Prov-läge",
    "Lånedator",
    "Åk 7",
    "Åk 8",
    "Åk 9",
    "Gymnasiet",
    "Bibliotek",
    "Kiosk-läge",
    "Delad iPad",
    "Wi-Fi Elev",
    "Wi-Fi Personal",
    "Skrivare Norra",
    "Digitala prov",
    "Begränsad",
    "Reserv",
    "Ny 2024",
    "Ny 2025",
    "Trasig",
    "Service",
    "Sommarlån",
    "Specialpedagog",
    "Musik",
    "Bild",
    "Slöjd",
    "Idrott",
    "Nationella prov",
    "Dubblett",
    "Dubblett",
)

#: (name, company, packageId, platform, store, storeId, versionText)
#: platform: 0 iOS, 1 Android, 2 macOS, 3 tvOS; store: 0 App Store, 1 Play, 2 in house
APP_CATALOG: tuple[tuple[str, str, str, int, int, str, str], ...] = (
    ("Google Chrome", "Google LLC", "com.google.chrome.ios", 0, 0, "535886823", "131.0.6778.73"),
    ("Google Chrome", "Google LLC", "com.android.chrome", 1, 1, "com.android.chrome", "131.0.6778.81"),
    ("Skolverket", "Skolverket", "se.skolverket.app", 0, 0, "1446723290", "3.2.1"),
    ("Skolverket", "Skolverket", "se.skolverket.app", 1, 1, "se.skolverket.app", "3.2.0"),
    ("Microsoft Word", "Microsoft Corporation", "com.microsoft.Office.Word", 0, 0, "586447913", "2.91"),
    ("Microsoft Teams", "Microsoft Corporation", "com.microsoft.skype.teams", 0, 0, "1113153706", "6.23.1"),
    ("OneDrive", "Microsoft Corporation", "com.microsoft.skydrive", 0, 0, "477537958", "15.22.1"),
    ("Keynote", "Apple", "com.apple.iWork.Keynote", 0, 0, "361285480", "14.2"),
    ("Pages", "Apple", "com.apple.iWork.Pages", 0, 0, "361309726", "14.2"),
    ("Numbers", "Apple", "com.apple.iWork.Numbers", 0, 0, "361304891", "14.2"),
    ("GarageBand", "Apple", "com.apple.mobilegarageband", 0, 0, "408709785", "2.3.15"),
    ("Kahoot!", "Kahoot! AS", "no.mobitroll.kahoot-app", 0, 0, "1131203560", "5.9.4"),
    ("GeoGebra Grafräknare", "GeoGebra", "org.geogebra.ios.graphing", 0, 0, "1146717204", "5.2.868"),
    ("GeoGebra Grafräknare", "GeoGebra", "org.geogebra.android", 1, 1, "org.geogebra.android", "5.2.868"),
    ("Skolon", "Skolon AB", "se.skolon.app", 0, 0, "1071385452", "4.12.0"),
    ("Inläsningstjänst", "Inläsningstjänst AB", "se.inlasningstjanst.elevapp", 0, 0, "1195617124", "2.8.3"),
    ("Google Classroom", "Google LLC", "com.google.Classroom", 0, 0, "924620788", "3.31.1"),
    (
        "Google Docs",
        "Google LLC",
        "com.google.android.apps.docs.editors.docs",
        1,
        1,
        "com.google.android.apps.docs.editors.docs",
        "1.24.472",
    ),
    (
        "Skrivtavlan",
        "Norrby kommun",
        "se.norrby.skrivtavlan",
        0,
        2,
        "https://mdm.norrby.se/apps/skrivtavlan.ipa",
        "1.0.4",
    ),
    ("Schoolsoft", "SchoolSoft AB", "se.schoolsoft.mobile", 0, 0, "590593138", "7.4.0"),
    ("Matteappen", "Norrby kommun", "se.norrby.matte", 2, 2, "https://mdm.norrby.se/apps/matte.pkg", "2.1"),
)

#: (model, platform, os versions, share of the fleet)
DEVICE_MODELS: tuple[tuple[str, str, tuple[str, ...], float], ...] = (
    ("iPad (9th generation)", "iOS", ("17.6.1", "18.1", "18.1.1"), 0.45),
    ("iPad (10th generation)", "iOS", ("18.1", "18.1.1", "18.2"), 0.25),
    ("iPad Air (5th generation)", "iOS", ("17.7", "18.1.1"), 0.10),
    ("Lenovo 300e Chromebook Gen 3", "ChromeOS", ("126.0.6478.222", "130.0.6723.124"), 0.08),
    ("HP Chromebook 11 G9 EE", "ChromeOS", ("130.0.6723.124",), 0.04),
    ("Samsung Galaxy Tab A8", "Android", ("13", "14"), 0.08),
)

#: Apple serials leave out I and O (they read as 1 and 0)
SERIAL_ALPHABET = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"
#: "now" for generated ``lastSeen`` times, so they do not depend on the clock
EPOCH = datetime(2025, 1, 15, 8, 0, tzinfo=UTC)

_FOLD = str.maketrans({"å": "a", "ä": "a", "ö": "o", "é": "e", "ü": "u", "Å": "A", "Ä": "A", "Ö": "O", "É": "E"})


def _rng(seed: int, stream: str) -> random.Random:
    return random.Random(f"bulkmdm-fleet:{seed}:{stream}")


def fold(text: str) -> str:
    """ASCII-fold Swedish letters: ``"Åsa Öberg" -> "Asa Oberg"``."""
    return text.translate(_FOLD)


def guid(rng: random.Random) -> str:
    """A version-4 GUID drawn from ``rng`` (lower case, like .NET prints it)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


@dataclass(frozen=True, slots=True)
class Person:
    first: str
    last: str
    #: "Åsa Öberg"
    name: str
    #: "asa.oberg@skola.se" (a number is added when the name is taken)
    email: str
    #: "asaobe07": three letters of each name and two digits, ASCII, unique
    account: str
    #: "070-123 45 67"
    phone: str


def people(n: int, seed: int = 1, *, taken: set[str] | None = None) -> list[Person]:
    """``n`` people with Swedish names and unique e-mails and account names.

    ``taken``: e-mail addresses and account names already in use (e.g. by
    hand-made edge cases); they are avoided and the new ones added to it.
    """
    rng = _rng(seed, "people")
    used = taken if taken is not None else set()
    out = []
    for _ in range(n):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        local = fold(f"{first}.{last}").lower()
        email, k = f"{local}@{DOMAIN}", 1
        while email in used:
            k += 1
            email = f"{local}{k}@{DOMAIN}"
        used.add(email)
        stem = (fold(first)[:3] + fold(last)[:3]).lower()
        account = f"{stem}{rng.randrange(100):02d}"
        while account in used:
            account = f"{stem}{rng.randrange(10000):04d}"
        used.add(account)
        phone = f"07{rng.choice('02369')}-{rng.randrange(1000):03d} {rng.randrange(100):02d} {rng.randrange(100):02d}"
        out.append(Person(first, last, f"{first} {last}", email, account, phone))
    return out


def serials(n: int, seed: int = 1) -> list[str]:
    """``n`` unique 12-character Apple-style serial numbers (upper case, no I/O)."""
    rng = _rng(seed, "serials")
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        serial = "".join(rng.choices(SERIAL_ALPHABET, k=12))
        if serial not in seen and not serial[0].isdigit():
            seen.add(serial)
            out.append(serial)
    return out


def school_groups(seed: int = 1) -> list[str]:
    """The group tree as ``\\``-separated paths, parents before children.

    The tree is the same for every seed (so documented edge cases hold);
    ``seed`` is accepted for symmetry with the other generators."""
    del seed
    paths = ["Skolor"]
    for school in SCHOOLS:
        paths.append(f"Skolor\\{school}")
        paths.extend(f"Skolor\\{school}\\{klass}" for klass in CLASSES)
    paths.append("Personal")
    paths.extend(f"Personal\\{g}" for g in STAFF_GROUPS)
    return paths


def class_groups() -> list[str]:
    """The paths of the class groups (where pupils live)."""
    return [p for p in school_groups() if p.count("\\") == 2]


def device_model(rng: random.Random) -> tuple[str, str, str]:
    """A (model, platform, osVersion) drawn with the fleet's mix: mostly iPads."""
    model, platform, versions, _ = rng.choices(DEVICE_MODELS, weights=[m[3] for m in DEVICE_MODELS])[0]
    return model, platform, rng.choice(versions)


def last_seen(rng: random.Random) -> str:
    """An ISO time within the three weeks before :data:`EPOCH`."""
    when = EPOCH - timedelta(seconds=rng.randrange(21 * 24 * 3600))
    return when.isoformat().replace("+00:00", "Z")


def school_code(path: str) -> str:
    """ "Skolor\\Björkskolan\\Klass 7A" -> "BJO" (for device names)."""
    parts = path.split("\\")
    name = parts[1] if len(parts) > 1 else parts[0]
    return fold(name)[:3].upper()
