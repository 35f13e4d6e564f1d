"""Memory a peer can make the relay spend on one message (issue 11 item 4), over real sockets
with Postfix's smtp-sink upstream: a header showing hundreds of thousands of addresses costs a
small multiple of the message's size, however the list is written (strict, read leniently, one
group); a header of more fields than the bound is refused whole. The kernel's own high-water
mark of the relay process (VmHWM) is the measure; each relay is fresh, so the mark is this
message's. The figures at 25 MB are bench rows (`bench/hugeheader.py`), not assertions here."""

from __future__ import annotations

import pytest

from helpers import send_mail

pytestmark = pytest.mark.relay

SENDER = "alice@example.org"
SIZE = 4_000_000
# The previous relay (b1310b9) added 9.9 x (strict, group) and 17.4 x (lenient) for these 4 MB and
# passed 10,004 fields on; now about 3.4 x, and refused.
MAX_ADDED_X_SIZE = 6.0


def kib(pid: int, key: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def address_lines(separator: str, start: int, size: int) -> tuple[list[str], int]:
    lines, n, total = [], start, 0
    while total < size:
        addrs = [f"u{i}@x{i % 10}.example.net" for i in range(n, n + 30)]
        n += 30
        lines.append(separator.join(addrs))
        total += len(lines[-1]) + 4
    return lines, n - start


def huge_header(shape: str) -> tuple[bytes, int]:
    sep = "; " if shape == "lenient" else ", "
    to, n_to = address_lines(sep, 0, SIZE // 2)
    cc, n_cc = address_lines(sep, n_to, SIZE // 2)
    if shape == "group":
        to_value = "everyone: " + ",\r\n ".join(to) + ";"
        cc_value = "others: " + ",\r\n ".join(cc) + ";"
    else:
        to_value = (sep.strip() + "\r\n ").join(to)
        cc_value = (sep.strip() + "\r\n ").join(cc)
    head = (f"From: {SENDER}\r\nSubject: huge header\r\nMessage-ID: <huge-{shape}@example.org>\r\n"
            f"To: {to_value}\r\nCc: {cc_value}\r\n")
    return (head + "\r\nHello.\r\n").encode(), n_to + n_cc


def big_relay(make_relay):
    def mutate(cfg):
        cfg["server"]["max_message_size"] = 3 * SIZE
        cfg["server"]["data_timeout_seconds"] = 300
        cfg["policy"]["rule"] = [{"name": "hide-list", "min_visible_external": 2, "action": "rewrite"}]
    return make_relay(mutate)


@pytest.mark.parametrize("shape", ["strict", "lenient", "group"])
def test_a_header_of_hundreds_of_thousands_of_addresses_costs_a_small_multiple_of_its_size(make_relay, shape):
    relay = big_relay(make_relay)
    message, addresses = huge_header(shape)
    idle = kib(relay.proc.pid, "VmRSS")
    r = send_mail(relay.smtp_port, SENDER, ["bob@example.org"], message, timeout=300)
    hwm = kib(relay.proc.pid, "VmHWM")
    added_x = (hwm - idle) * 1024 / len(message)
    print(f"{shape}: {len(message)} bytes, {addresses} addresses, idle {idle} KiB, "
          f"peak {hwm} KiB, added {added_x:.2f} x the message")
    assert r["data"].code == 250, r
    got = relay.upstream.wait_for(1, timeout=30)[0]
    assert got.header("To") == ["undisclosed-recipients:;"]
    assert not got.header("Cc")
    assert added_x <= MAX_ADDED_X_SIZE, f"peak grew {added_x:.2f} x the message size"


def test_more_header_fields_than_the_bound_are_refused_and_nothing_is_forwarded(make_relay):
    relay = big_relay(make_relay)
    fields = "".join(f"X-Filler: {i}\r\n" for i in range(10_001))
    message = (f"From: {SENDER}\r\nTo: bob@example.org\r\nSubject: many fields\r\n{fields}"
               "\r\nHello.\r\n").encode()
    r = send_mail(relay.smtp_port, SENDER, ["bob@example.org"], message)
    print("10,004 fields:", r["data"])
    assert r["data"].code == 550 and r["data"].status == "5.6.0", r
    assert "more than 10000 fields" in r["data"].text, r
    assert relay.upstream.messages(settle=0.5) == []
