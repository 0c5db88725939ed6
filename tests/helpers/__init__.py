"""What the tests run against: a real HTTP API, SMTP server, mounts, hosts, a database lock, a report day."""
