"""A seeded generator of the project's own sample data, so that a fresh machine can run everything.

``companies.csv``: synthetic company descriptions over the 11 sectors of the real data, with a bit of
cross-sector vocabulary so that a model has something to learn. ``companies_short.csv``: one-sentence
descriptions of other synthetic companies (the extra evaluation set, like the real Bloomberg file).
``tabular.csv``: numeric company figures and a size segment, for the tabular example.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

SECTORS: dict[str, tuple[list[str], list[str]]] = {
    "Technology": (
        [
            "cloud software",
            "semiconductors",
            "data center servers",
            "cybersecurity platforms",
            "enterprise SaaS",
            "network switches",
            "analytics software",
            "microchips",
            "storage systems",
            "developer tools",
        ],
        ["designs", "develops", "licenses"],
    ),
    "Healthcare": (
        [
            "medical devices",
            "oncology drugs",
            "diagnostic tests",
            "clinical trials",
            "hospital services",
            "biologic therapies",
            "surgical instruments",
            "vaccines",
            "gene therapies",
            "patient care",
        ],
        ["develops", "manufactures", "provides"],
    ),
    "Financial Services": (
        [
            "commercial banking",
            "deposit accounts",
            "mortgage loans",
            "asset management",
            "insurance policies",
            "wealth management",
            "credit cards",
            "brokerage services",
            "consumer lending",
            "reinsurance",
        ],
        ["offers", "provides", "underwrites"],
    ),
    "Industrials": (
        [
            "aerospace components",
            "industrial machinery",
            "freight logistics",
            "construction equipment",
            "defense systems",
            "trucking services",
            "electrical equipment",
            "building products",
            "rail services",
            "engineering services",
        ],
        ["manufactures", "operates", "supplies"],
    ),
    "Consumer Cyclical": (
        [
            "apparel",
            "restaurants",
            "automobiles",
            "home furnishings",
            "retail stores",
            "footwear",
            "hotels and resorts",
            "casinos",
            "e-commerce marketplaces",
            "auto parts",
        ],
        ["sells", "operates", "designs"],
    ),
    "Real Estate": (
        [
            "office properties",
            "apartment communities",
            "shopping centers",
            "industrial warehouses",
            "REIT",
            "self-storage facilities",
            "property leasing",
            "real estate development",
            "data center properties",
            "healthcare properties",
        ],
        ["owns", "leases", "develops"],
    ),
    "Energy": (
        [
            "crude oil",
            "natural gas",
            "oilfield services",
            "pipelines",
            "drilling rigs",
            "refineries",
            "liquefied natural gas",
            "exploration and production",
            "coal",
            "offshore wells",
        ],
        ["explores", "produces", "transports"],
    ),
    "Communication Services": (
        [
            "wireless networks",
            "broadband internet",
            "streaming video",
            "advertising",
            "television networks",
            "video games",
            "social media",
            "telecommunications",
            "publishing",
            "radio stations",
        ],
        ["operates", "distributes", "publishes"],
    ),
    "Consumer Defensive": (
        [
            "packaged foods",
            "beverages",
            "household products",
            "grocery stores",
            "tobacco",
            "personal care",
            "discount stores",
            "farm products",
            "snacks",
            "cosmetics",
        ],
        ["produces", "sells", "distributes"],
    ),
    "Basic Materials": (
        [
            "specialty chemicals",
            "steel",
            "aluminum",
            "gold mining",
            "copper",
            "fertilizers",
            "paper packaging",
            "lumber",
            "industrial gases",
            "plastics",
        ],
        ["produces", "mines", "manufactures"],
    ),
    "Utilities": (
        [
            "electric utility",
            "natural gas distribution",
            "water utility",
            "power generation",
            "transmission lines",
            "renewable power",
            "regulated utilities",
            "wastewater services",
            "nuclear plants",
            "electricity customers",
        ],
        ["generates", "distributes", "operates"],
    ),
}
CUSTOMERS = ["businesses", "consumers", "governments", "hospitals", "retailers", "manufacturers", "municipalities"]
REGIONS = ["in the United States", "worldwide", "in North America", "in Europe and Asia", "internationally"]
SUFFIXES = ["Inc.", "Corp.", "Holdings, Inc.", "Group", "Co.", "Ltd."]
SYLLABLES = ["al", "ver", "to", "nex", "ra", "cor", "bri", "den", "qua", "lin", "mar", "tek", "so", "vi"]


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def _description(rng: random.Random, sector: str, short: bool) -> str:
    products, verbs = SECTORS[sector]
    chosen = rng.sample(products, 3)
    if rng.random() < 0.3:  # cross-sector vocabulary: real companies are not one-word tidy
        other = rng.choice([s for s in SECTORS if s != sector])
        chosen[2] = rng.choice(SECTORS[other][0])
    name = f"{_name(rng)} {rng.choice(SUFFIXES)}"
    first = (
        f"{name} {rng.choice(verbs)} {chosen[0]}, {chosen[1]} and {chosen[2]} "
        f"for {rng.choice(CUSTOMERS)} {rng.choice(REGIONS)}."
    )
    if short:
        return first
    return (
        f"{first} The company operates through {rng.randint(2, 4)} segments and was founded in "
        f"{rng.randint(1900, 2015)}. It also offers {rng.choice(products)} and related services. "
        f"The company is headquartered in {rng.choice(['Texas', 'New York', 'California', 'Ohio', 'Florida'])}."
    )


def write_text_sample(folder: Path, *, per_sector: int = 60, seed: int = 7) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for filename, rows, short in (("companies.csv", per_sector, False), ("companies_short.csv", 20, True)):
        with (folder / filename).open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["ticker", "description", "sector"])
            for sector in SECTORS:
                for _ in range(rows):
                    ticker = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(4))
                    writer.writerow([ticker, _description(rng, sector, short), sector])


def write_tabular_sample(folder: Path, *, rows: int = 600, seed: int = 11) -> None:
    """Company figures -> size segment (small / mid / large), with noise so it is not a lookup table."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "tabular.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["revenue_musd", "employees", "operating_margin", "years_listed", "segment"])
        for _ in range(rows):
            segment = rng.choice(["small", "mid", "large"])
            scale = {"small": 1.0, "mid": 2.2, "large": 3.4}[segment]
            revenue = round(10 ** (scale + rng.gauss(0, 0.35)), 1)
            employees = int(revenue * rng.uniform(2, 8))
            margin = round(rng.gauss(0.05 + 0.03 * scale, 0.06), 3)
            years = max(1, int(rng.gauss(6 * scale, 6)))
            writer.writerow([revenue, employees, margin, years, segment])


def write_all(folder: Path) -> None:
    write_text_sample(folder)
    write_tabular_sample(folder)
