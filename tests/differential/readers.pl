#!/usr/bin/perl
# Independent reader for the differential test (tests/differential.rs): Email::Address::XS
# (Debian libemail-address-xs-perl), a C parser of RFC 5322 address lists that does not decode
# RFC 2047. Reads JSON lines {"id": N, "values": [base64 unfolded field values]} and prints
# {"id": N, "readers": {"perl-email-address-xs": [addresses]}} with the same loose canonical form
# as readers.py (domain lower case, trailing dot dropped; IDN domains are left as they are).
use strict;
use warnings;
use JSON::PP;
use MIME::Base64 qw(decode_base64);
use Email::Address::XS qw(parse_email_addresses);

my $json = JSON::PP->new->canonical;
$| = 0;
while (my $line = <STDIN>) {
    my $case = $json->decode($line);
    my (@out, %seen);
    for my $b64 (@{ $case->{values} }) {
        my $value = decode_base64($b64);
        my @addrs = eval { parse_email_addresses($value) };
        for my $a (@addrs) {
            my ($user, $host) = ($a->user, $a->host);
            next unless defined $user && defined $host && length $user && length $host;
            $host = lc $host;
            $host =~ s/\.$//;
            my $addr = "$user\@$host";
            push @out, $addr unless $seen{$addr}++;
        }
    }
    print $json->encode({ id => $case->{id}, readers => { 'perl-email-address-xs' => \@out } }), "\n";
}
