"""The lexical guard's vocabulary: number, date, negation, currency and unit words.

Read by :mod:`cache.guard`; kept apart so the guard's module holds its logic. ``LEXICON`` folds
the word classes the guard tests every word against into one dict (one look-up per word on the
request path instead of four).
"""

from __future__ import annotations

__all__ = [
    "AMBIGUOUS_DATE_WORDS",
    "CURRENCY",
    "CURRENCY_WORDS",
    "DATE_WORDS",
    "LEXICON",
    "NEGATIONS",
    "NOT_ENTITIES",
    "NUMBER_WORDS",
    "UNITS",
]

NUMBER_WORDS = {
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
    "eleven": "11",
    "twelve": "12",
    "thirteen": "13",
    "fourteen": "14",
    "fifteen": "15",
    "sixteen": "16",
    "seventeen": "17",
    "eighteen": "18",
    "nineteen": "19",
    "twenty": "20",
    "thirty": "30",
    "forty": "40",
    "fifty": "50",
    "sixty": "60",
    "seventy": "70",
    "eighty": "80",
    "ninety": "90",
    "hundred": "100",
    "thousand": "1000",
    "million": "1000000",
    "billion": "1000000000",
    "dozen": "12",
    "half": "0.5",
}
DATE_WORDS = frozenset(
    [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
        "today",
        "tomorrow",
        "yesterday",
        "tonight",
        "weekend",
    ]
)
# "may" and "march" are also a verb: only counted when capitalised (see cache.guard).
AMBIGUOUS_DATE_WORDS = frozenset({"may", "march", "sat", "sun", "wed"})
NEGATIONS = frozenset(
    [
        "not",
        "no",
        "never",
        "none",
        "nobody",
        "nothing",
        "nowhere",
        "neither",
        "nor",
        "without",
        "cannot",
        "cant",
        "dont",
        "doesnt",
        "didnt",
        "isnt",
        "arent",
        "wasnt",
        "werent",
        "wont",
        "wouldnt",
        "shouldnt",
        "couldnt",
        "hasnt",
        "havent",
        "hadnt",
        "aint",
    ]
)
# Capitalised words that are not entities when they are not sentence-initial.
NOT_ENTITIES = frozenset({"i", "i'm", "i've", "i'll", "i'd", "ok", "okay", "hi", "hello", "please"})
CURRENCY = {"$": "usd", "€": "eur", "£": "gbp", "¥": "jpy", "₹": "inr"}
CURRENCY_WORDS = {
    **{w: "usd" for w in ("usd", "dollar", "dollars", "bucks")},
    **{w: "eur" for w in ("eur", "euro", "euros")},
    **{w: "jpy" for w in ("jpy", "yen")},
    **{w: "inr" for w in ("inr", "rupee", "rupees")},
    "gbp": "gbp",
}
# A unit right after a number belongs to it ("5 km" is not "5 miles"); spellings of one unit
# share a name. Ambiguous abbreviations ("m", "in") are left out; "pounds" is its own unit.
_UNIT_GROUPS = {
    "s": "s sec secs second seconds",
    "min": "min mins minute minutes",
    "h": "h hr hrs hour hours",
    "d": "day days",
    "wk": "wk wks week weeks",
    "mo": "month months",
    "yr": "yr yrs year years",
    "mg": "mg milligram milligrams",
    "g": "g gram grams",
    "kg": "kg kilo kilos kilogram kilograms",
    "lb": "lb lbs",
    "pound": "pound pounds",
    "oz": "oz ounce ounces",
    "mm": "mm millimetre millimetres millimeter millimeters",
    "cm": "cm centimetre centimetres centimeter centimeters",
    "metre": "metre metres meter meters",
    "km": "km kilometre kilometres kilometer kilometers",
    "mi": "mi mile miles",
    "ft": "ft foot feet",
    "ml": "ml millilitre millilitres milliliter milliliters",
    "l": "l litre litres liter liters",
    "gal": "gallon gallons",
    "cup": "cup cups",
    "kb": "kb",
    "mb": "mb megabyte megabytes",
    "gb": "gb gigabyte gigabytes gig gigs",
    "tb": "tb terabyte terabytes",
    "mbps": "mbps",
    "gbps": "gbps",
}
UNITS = {word: unit for unit, words in _UNIT_GROUPS.items() for word in words.split()}

# Every word's class at once: "neg", "num" or "date" (the first that applies, in the guard's
# order: a negation is never read as a number, a number word never as a date).
LEXICON: dict[str, str] = {
    **{word: "date" for word in DATE_WORDS},
    **{word: "num" for word in NUMBER_WORDS},
    **{word: "neg" for word in NEGATIONS},
}
