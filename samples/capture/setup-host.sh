#!/usr/bin/env bash
# Prepare a Debian 12 host for the sample captures: test users, the capture
# syslog daemon, and the directories the per-MTA scripts write into.
# Run as root. Safe to run more than once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

# Local mailbox owners used by every scenario. "sender" receives the
# non-delivery notifications, so that the NDR's own Message-ID can be read
# back from a mailbox (ground truth that does not come from the MTA's log).
for u in alice bob carol dave erin frank sender; do
    getent passwd "$u" >/dev/null || useradd --create-home --shell /usr/sbin/nologin "$u"
done
# The uids the Debian Exim and Sendmail builds look up by name at run time.
getent group Debian-exim >/dev/null || groupadd --system Debian-exim
getent passwd Debian-exim >/dev/null || useradd --system -g Debian-exim -d /var/spool/exim4 -s /usr/sbin/nologin Debian-exim
getent group smmsp >/dev/null || groupadd --system smmsp
getent passwd smmsp >/dev/null || useradd --system -g smmsp -d /var/lib/sendmail -s /usr/sbin/nologin smmsp

mkdir -p /var/log/mtqpd-capture /var/spool/mtqpd-capture/rsyslog
if ! pgrep -x rsyslogd >/dev/null; then
    rsyslogd -f "$here/rsyslog-capture.conf" -i /run/mtqpd-capture-rsyslogd.pid
fi
