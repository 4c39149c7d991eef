"""The sample audience in manifests/samples/: synthetic people, made with a fixed seed.

Korean and English names; some addresses appear twice, spelled with other case or with
spaces around them (one recipient each, counted in duplicatesInAudience); a few cannot be
sent to at all (failed, with the reason). `python -m herald_dev.samples` rewrites the
committed ConfigMap; a test fails when it is stale.
"""

from __future__ import annotations

import csv
import io
import random
import sys
from pathlib import Path

SEED = 2026
COUNT = 10_000
CONFIGMAP = "usage-notice-recipients"
KEY = "recipients.csv"
PATH = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "recipients.yaml"

KOREAN_SURNAMES = [("김", "kim"), ("이", "lee"), ("박", "park"), ("최", "choi"), ("정", "jung"),
                   ("강", "kang"), ("조", "cho"), ("윤", "yoon"), ("장", "jang"), ("임", "lim"),
                   ("한", "han"), ("오", "oh"), ("서", "seo"), ("신", "shin"), ("권", "kwon")]
KOREAN_GIVEN = [("민준", "minjun"), ("서연", "seoyeon"), ("도윤", "doyun"), ("하은", "haeun"),
                ("시우", "siwoo"), ("지우", "jiwoo"), ("예준", "yejun"), ("수아", "sua"),
                ("주원", "juwon"), ("지민", "jimin"), ("현우", "hyunwoo"), ("채원", "chaewon"),
                ("건우", "geonwoo"), ("다은", "daeun"), ("우진", "woojin"), ("소율", "soyul")]
ENGLISH_FIRST = ["James", "Olivia", "Liam", "Emma", "Noah", "Ava", "Oliver", "Sophia",
                 "Elijah", "Isabella", "Lucas", "Mia", "Mason", "Amelia", "Ethan", "Harper"]
ENGLISH_LAST = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
                "Wilson", "Taylor", "Clark", "Lewis", "Walker", "Young", "Allen", "King"]
DOMAINS = ["example.com", "example.org", "example.net", "mail.example.com", "예시.kr"]
INVALID = ["kim.minjun.example.com", "lee@@example.com", "park@", "@example.org",
           "choi minjun@example.com", "jung@exa mple.com", "kang@-example-.com",
           "윤서연@example.com"]


def recipients(count: int = COUNT, seed: int = SEED) -> list[dict[str, str]]:
    """`count` rows: email, name, customer_id, lang (about 1 % repeats, 8 invalid)."""
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    invalid_at = sorted(rng.sample(range(count), min(len(INVALID), count // 50)))
    for i in range(count):
        if i in invalid_at:
            rows.append({"email": INVALID[invalid_at.index(i)], "name": "-",
                         "customer_id": f"C{100000 + i}", "lang": "en"})
        elif rows and rng.random() < 0.01:  # the same person again, spelled otherwise
            again = dict(rng.choice(rows))
            spelled = again["email"]
            again["email"] = rng.choice([spelled.upper(), f"  {spelled} ",
                                         spelled.capitalize()])
            rows.append(again)
        elif rng.random() < 0.6:
            (surname, s_roman), (given, g_roman) = (rng.choice(KOREAN_SURNAMES),
                                                    rng.choice(KOREAN_GIVEN))
            rows.append({"email": f"{g_roman}.{s_roman}{i}@{rng.choice(DOMAINS)}",
                         "name": f"{surname}{given}", "customer_id": f"C{100000 + i}",
                         "lang": "ko"})
        else:
            first, last = rng.choice(ENGLISH_FIRST), rng.choice(ENGLISH_LAST)
            rows.append({"email": f"{first.lower()}.{last.lower()}{i}@{rng.choice(DOMAINS)}",
                         "name": f"{first} {last}", "customer_id": f"C{100000 + i}",
                         "lang": "en"})
    return rows


def recipients_csv(count: int = COUNT, seed: int = SEED) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, ["email", "name", "customer_id", "lang"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(recipients(count, seed))
    return out.getvalue()


def configmap_yaml(count: int = COUNT, seed: int = SEED) -> str:
    lines = "".join(f"    {line}\n" for line in recipients_csv(count, seed).splitlines())
    return (f"# {count} synthetic recipients (seed {seed}), made by "
            f"`python -m herald_dev.samples`; do not edit.\n"
            f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {CONFIGMAP}\n"
            f"  namespace: herald-demo\ndata:\n  {KEY}: |\n{lines}")


def main() -> int:
    PATH.write_text(configmap_yaml())
    print(f"wrote {PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
