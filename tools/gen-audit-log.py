#!/usr/bin/env python3
"""Writes a realistic, hash-chained bccguard audit log (SPEC 5) for trying `audit report`,
`audit query` and `audit verify` at scale:  tools/gen-audit-log.py OUT.jsonl [N] [DAYS]
N records (default 10000) spread over the last DAYS days (default 7), oldest first; three rules
(one trialled in monitor mode), 40 sender domains, a few sessions per minute."""

import datetime
import hashlib
import json
import random
import sys

out = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
days = int(sys.argv[3]) if len(sys.argv) > 3 else 7
rng = random.Random(14)
now = datetime.datetime.now(datetime.timezone.utc)
times = sorted(now - datetime.timedelta(seconds=rng.uniform(0, days * 86400)) for _ in range(n))
rules = [("many-external", "rewrite", "enforce", 0.6), ("mass-external", "reject", "enforce", 0.1),
         ("trial-split", "split", "monitor", 0.3)]
domains = [f"dept{i}.example.org" for i in range(10)] + [f"partner{i}.example.net" for i in range(30)]
prev = "0" * 64
with open(out, "w") as f:
    for seq, t in enumerate(times, 1):
        rule, action, mode, _ = rng.choices(rules, weights=[r[3] for r in rules])[0]
        visible = rng.randint(6, 40)
        rec = {
            "time": t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "seq": seq, "session": f"{int(t.timestamp()):x}-{seq:x}",
            "client": "10.0.0.%d" % rng.randint(2, 250), "auth_user": rng.choice([None, "alice", "bob"]),
            "sender": f"user{rng.randint(1, 500)}@{rng.choice(domains)}",
            "message_id": f"<{seq}.{rng.getrandbits(32):x}@mail.example.org>", "rule": rule,
            "action": action, "mode": mode, "would": mode == "monitor",
            "reason": f"The message shows {visible} recipients to each other; rule '{rule}' applies.",
            "visible_count": visible, "visible_external": visible - 1, "external_domains": rng.randint(1, 9),
            "envelope_recipients": visible, "recipients_mode": "none", "upstream": "250 2.0.0 Ok: queued",
            "policy_version": "0" * 64, "header_digest_original": "0" * 64, "header_digest_forwarded": None,
            "prev": prev,
        }
        canonical = json.dumps(rec, separators=(",", ":"))
        prev = hashlib.sha256(canonical.encode()).hexdigest()
        f.write(canonical[:-1] + ',"hash":"' + prev + '"}\n')
