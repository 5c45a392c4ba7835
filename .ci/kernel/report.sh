#!/usr/bin/env bash
# Summarise a test-kernel run from the files the guest wrote (run.sh calls
# it; it also works on a saved result dir):
#
#   .ci/kernel/report.sh KERNEL RESULT_DIR PKG...
#
# One line per top-level test with its result, each failed subtest with its
# first messages, a count of subtests, and a closing "N passed, N failed"
# line over top-level tests (plus the daemon start check). Exits non-zero if
# anything failed, a package's binary exited non-zero, or a package has no
# result at all (the VM died first).
set -uo pipefail

KERNEL=$1 res=$2
shift 2

status=0
passed=0 failed=0 skipped=0

release=$(cat "$res/kernel-release" 2>/dev/null || echo "unknown (no result)")
echo "== kernel $KERNEL: $release"

if [[ -f $res/daemon.result ]]; then
	r=$(cat "$res/daemon.result")
	printf '%-4s %s\n' "$r" "daemon start (sockaccel run attaches)"
	if [[ $r == PASS ]]; then
		passed=$((passed + 1))
	else
		failed=$((failed + 1))
		status=1
		# The daemon's error, as a user would see it. A load error carries
		# the verifier log on the same line, tab-separated: show the message
		# and the verifier lines that say what was refused.
		grep -v '^{' "$res/daemon.log" 2>/dev/null | tail -n 2 | awk -F'\t' '{
			out = $1; n = 0
			for (i = 2; i <= NF && n < 3; i++)
				if ($i ~ /poisoned|reserved|invalid|unknown|not supported|not allowed|denied|R[0-9]+ (type|is)/) { out = out " [" $i "]"; n++ }
			print substr(out, 1, 400)
		}' | sed 's/^/       /'
	fi
fi

for pkg in "$@"; do
	name=${pkg//\//_}
	log=$res/$name.log
	rc=$(cat "$res/$name.rc" 2>/dev/null || echo none)
	echo "-- $pkg (exit $rc)"
	if [[ ! -f $log ]]; then
		echo "FAIL $pkg: no output (the VM stopped before it ran)"
		failed=$((failed + 1))
		status=1
		continue
	fi
	# go test -v: "=== RUN   T", "=== NAME  T"/"=== CONT  T" switch the test
	# whose output follows; "--- PASS: T (1.2s)" ends one, indented by depth
	# for subtests. Failure messages are indented "file_test.go:N: ..." lines.
	counts=$(awk -v pkg="$pkg" '
		function cur_of(line) { sub(/^=== (RUN|NAME|CONT|PAUSE) +/, "", line); return line }
		/^=== (RUN|NAME|CONT)/ { cur = cur_of($0); started[cur] = 1; next }
		/^ *--- (PASS|FAIL|SKIP): / {
			line = $0
			match(line, /^ */); depth = RLENGTH / 4
			sub(/^ *--- /, "", line)
			res = substr(line, 1, 4)
			sub(/^(PASS|FAIL|SKIP): /, "", line)
			tname = line; sub(/ \(.*$/, "", tname)
			dur = line; sub(/^[^(]*/, "", dur)
			done[tname] = 1
			if (depth == 0) {
				top[++ntop] = sprintf("%-4s %s %s", res, tname, dur)
				n[res]++
				if (res == "FAIL") for (i = 1; i <= nmsg[tname] && i <= 3; i++) top[++ntop] = "       " msg[tname, i]
			} else {
				split(tname, parts, "/"); parent = parts[1]
				sub_n[parent]++; sub_r[parent, res]++
				if (res == "FAIL") {
					top[++ntop] = sprintf("       FAIL %s %s", tname, dur)
					for (i = 1; i <= nmsg[tname] && i <= 2; i++) top[++ntop] = "            " msg[tname, i]
				}
			}
			next
		}
		/^ +[A-Za-z0-9_]+\.go:[0-9]+: / && cur != "" {
			m = $0; sub(/^ +/, "", m)
			if (nmsg[cur] < 3) msg[cur, ++nmsg[cur]] = substr(m, 1, 300)
			next
		}
		/^panic: / && !panicked { panicked = 1; top[++ntop] = "FAIL " pkg ": " $0 " (while in " cur ")"; n["FAIL"]++ }
		END {
			for (i = 1; i <= ntop; i++) {
				print top[i]
				# After a top-level line, its subtest count.
				split(top[i], f, " ")
				if (f[1] ~ /^(PASS|FAIL|SKIP)$/ && (f[2] in sub_n))
					printf "       (%d subtests: %d pass, %d fail, %d skip)\n", sub_n[f[2]], sub_r[f[2], "PASS"], sub_r[f[2], "FAIL"], sub_r[f[2], "SKIP"]
			}
			# Started but never finished: the binary or the VM died.
			for (t in started) if (!(t in done) && t !~ /\//) { print "FAIL " t " (did not finish)"; n["FAIL"]++ }
			printf "COUNTS %d %d %d\n", n["PASS"], n["FAIL"], n["SKIP"]
		}' "$log")
	grep -v '^COUNTS ' <<<"$counts"
	read -r _ p f s < <(grep '^COUNTS ' <<<"$counts")
	if ((p + f + s == 0)) && [[ $rc == 0 ]]; then
		echo "     (no test matched RUN)"
	fi
	passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
	if [[ $rc != 0 ]]; then
		status=1
		if ((f == 0)); then
			# Exit status without a failed test: build-time panic, timeout,
			# or no result file at all.
			echo "FAIL $pkg: test binary exit $rc; last lines:"
			tail -n 5 "$log" | sed 's/^/       /'
			failed=$((failed + 1))
		fi
	fi
done

((failed == 0)) || status=1
echo "test-kernel: $passed passed, $failed failed, $skipped skipped"
exit $status
