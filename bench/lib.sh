#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Shell helpers shared by the bench scripts (sourced, not run).

# Two network namespaces, cli and srv, joined by a veth pair (cli's end is
# cli_if, srv's srv_if), with cli_ip and srv_ip on a /24,
# loopback up and the sysctls a load generator needs (wide port range,
# TIME_WAIT reuse, deep accept queues). The caller deletes them.
bench_netns_pair() { # cli srv cli_ip srv_ip cli_if srv_if
	ip netns add "$1"
	ip netns add "$2"
	ip -n "$1" link add "$5" type veth peer name "$6" netns "$2"
	ip -n "$1" addr add "$3/24" dev "$5"
	ip -n "$2" addr add "$4/24" dev "$6"
	local ns
	for ns in "$1" "$2"; do
		ip -n "$ns" link set lo up
		ip netns exec "$ns" sysctl -qw net.ipv4.ip_local_port_range="1024 65000"
		ip netns exec "$ns" sysctl -qw net.ipv4.tcp_tw_reuse=1
		ip netns exec "$ns" sysctl -qw net.core.somaxconn=4096
	done
	ip -n "$1" link set "$5" up
	ip -n "$2" link set "$6" up
}

# Waits up to 10 s for something to accept on addr:port in ns; else one line
# naming who waited and returns 1.
bench_wait_port() { # who ns addr port
	local _
	for _ in $(seq 1 100); do
		ip netns exec "$2" bash -c "exec 3<>/dev/tcp/$3/$4" 2>/dev/null && return 0
		sleep 0.1
	done
	echo "$1: nothing listens on $3:$4 in $2" >&2
	return 1
}
