#!/usr/bin/env python3
"""Writes a synthetic "Sent items" mbox for `bccguard check` bulk runs and their figures.

    tools/gen-mbox.py OUT.mbox [--messages 10000] [--body-kb 2] [--seed 1]

Mix (deterministic for a seed): 70 % one or two internal recipients, 20 % six to ten outside
recipients in Cc (the "many-external" rule), 5 % 25 outside recipients (a mass mailing),
5 % with a Bcc field. Every tenth body has a `From ` line, written mboxrd-quoted as `>From `;
every seventh message has CRLF line ends. Bodies are --body-kb KiB of text in 76-column lines
(use --body-kb 100 and --messages 10000 for a 1 GB file). Prints the expected counts as JSON on
stderr. Writes in a streaming fashion: memory stays small whatever the size.
"""

import argparse
import json
import random
import sys


def addresses(rng, n, domain_pool):
    return [f"user{rng.randrange(10**6)}@{rng.choice(domain_pool)}" for _ in range(n)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--body-kb", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    outside = [f"client{i}.example.net" for i in range(40)]
    line = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod te\n")
    body_lines = max(1, int(args.body_kb * 1024) // len(line))
    counts = {"messages": 0, "internal": 0, "many_external": 0, "mass": 0, "bcc": 0, "bytes": 0}
    with open(args.out, "wb") as f:
        for i in range(args.messages):
            kind = rng.random()
            to = ["colleague@example.org"]
            cc, bcc = [], []
            if kind < 0.70:
                counts["internal"] += 1
                if rng.random() < 0.5:
                    cc = ["team@example.org"]
            elif kind < 0.90:
                counts["many_external"] += 1
                cc = addresses(rng, rng.randint(6, 10), outside)
            elif kind < 0.95:
                counts["mass"] += 1
                to = addresses(rng, 25, outside)
            else:
                counts["bcc"] += 1
                bcc = addresses(rng, 3, outside)
            head = [
                f"From: Ann Sender <ann@example.org>",
                f"To: {', '.join(to)}",
            ]
            if cc:
                head.append(f"Cc: {', '.join(cc)}")
            if bcc:
                head.append(f"Bcc: {', '.join(bcc)}")
            head += [
                f"Subject: generated message {i}",
                f"Message-ID: <gen{i}.{args.seed}@example.org>",
                "Date: Mon, 02 Nov 2026 10:00:00 +0000",
                "MIME-Version: 1.0",
                "Content-Type: text/plain; charset=utf-8",
            ]
            body = [line.rstrip("\n")] * body_lines
            if i % 10 == 0:
                body.insert(1, ">From the minutes of the last meeting")  # mboxrd-quoted "From "
            eol = "\r\n" if i % 7 == 0 else "\n"
            text = eol.join(head) + eol + eol + eol.join(body) + eol
            f.write(f"From ann@example.org Mon Nov  2 10:00:00 2026\n".encode())
            f.write(text.encode())
            f.write(b"\n")
            counts["messages"] += 1
    import os
    counts["bytes"] = os.path.getsize(args.out)
    json.dump(counts, sys.stderr)
    sys.stderr.write("\n")


if __name__ == "__main__":
    main()
