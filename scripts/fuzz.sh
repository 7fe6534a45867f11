#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets of fuzz/ under AFL++, on stable Rust (cargo afl).
#
#   scripts/fuzz.sh [TARGET|all|list] [SECONDS]     default: all, 600 s in total
#
# Each target starts from its committed corpus (fuzz/corpus/TARGET/); "all" splits the
# time between the targets and runs them one after another (one fuzzer process at a
# time: the machines are small and shared). Afterwards, for each target:
# - the new inputs that add coverage are minimised (afl-cmin, then afl-tmin) and at
#   most KEEP (default 8) of them are saved to fuzz/corpus/TARGET/;
# - every crash is copied to fuzz/regressions/TARGET/ (the test replays it: fix the
#   bug, keep the file); hangs are reported and left in target/fuzz/TARGET/;
# - execs_done, saved_crashes, saved_hangs and corpus_count from AFL's fuzzer_stats
#   are printed. The script exits 1 when a crash or hang was found.
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-all}
seconds=${2:-600}
keep=${KEEP:-8}
out_root=target/fuzz
bin=target/afl/release/cellos-fuzz-afl

# cargo-afl and the AFL++ it builds from the source inside the crate (no download).
if ! command -v cargo-afl >/dev/null; then
    echo "== installing cargo-afl"
    cargo install --locked cargo-afl
fi
if ! compgen -G "$HOME/.local/share/afl.rs/rustc-*/afl.rs-*/afl/bin/afl-fuzz" >/dev/null; then
    echo "== building AFL++ (cargo afl config --build)"
    cargo afl config --build
fi

# Instrumented, in its own target directory (its flags differ from the workspace's).
# cargo afl turns on overflow checks and debug assertions; debug assertions go off
# again so that a crash is one the shipped release build has (dhcproto, for one,
# debug-asserts on malformed options it then skips), while overflow checks stay:
# an overflow in a parser is a bug even where release would wrap.
echo "== cargo afl build (instrumented, in target/afl)"
RUSTFLAGS="${RUSTFLAGS:-} -C debug-assertions=off" CARGO_TARGET_DIR=target/afl \
    cargo afl build --release -p cellos-fuzz --features afl --bin cellos-fuzz-afl

mapfile -t all < <("$bin" --list | cut -f1)
case "$what" in
    list)
        "$bin" --list
        exit 0
        ;;
    all) targets=("${all[@]}") ;;
    *)
        if ! printf '%s\n' "${all[@]}" | grep -qx -- "$what"; then
            echo "unknown target $what; targets: ${all[*]}" >&2
            exit 2
        fi
        targets=("$what")
        ;;
esac
per=$((seconds / ${#targets[@]}))
if ((per < 10)); then per=10; fi

# Scratch files (the record target's data file, dispatch's server directories) go
# to memory, and are removed at the end.
scratch=$(mktemp -d "${TMPDIR:-/dev/shm}/cellos-fuzz.XXXXXX" 2>/dev/null || mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export CELLOS_FUZZ_SCRATCH=$scratch
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_QUIET=1 AFL_IGNORE_SEED_PROBLEMS=1
# A crash must not write a core file of the whole fuzzer process.
ulimit -c 0

afl_stat() { awk -F' *: *' -v k="$2" '$1 == k { print $2 }' "$1"; }

found=0
summary=()
for t in "${targets[@]}"; do
    corpus=fuzz/corpus/$t
    out=$out_root/$t
    rm -rf "$out"
    mkdir -p "$out_root"
    timeout_ms=1000
    # dispatch starts a server per input; object may be told to build a 255-shard
    # code, which is slow only under instrumentation.
    if [[ $t == dispatch || $t == object ]]; then timeout_ms=5000; fi
    echo "== fuzzing $t for ${per}s (corpus: $(ls "$corpus" | wc -l) files)"
    cargo afl fuzz -i "$corpus" -o "$out" -V "$per" -t "$timeout_ms" -- "$bin" "$t" \
        >"$out_root/$t.log" 2>&1 || {
        echo "afl-fuzz failed for $t; its log:" >&2
        tail -30 "$out_root/$t.log" >&2
        exit 1
    }
    stats=$out/default/fuzzer_stats

    # New interesting inputs: the queue minus the seeds AFL started from.
    fresh=$out/fresh
    min=$out/min
    mkdir -p "$fresh"
    for f in "$out"/default/queue/id:*; do
        [[ $f == *orig:* ]] && continue
        [[ -f $f && $(wc -c <"$f") -le 4096 ]] && cp "$f" "$fresh/"
    done
    saved=0
    if compgen -G "$fresh/*" >/dev/null; then
        # Keep the inputs that cover something the existing corpus does not.
        both=$out/both
        mkdir -p "$both"
        cp "$corpus"/* "$fresh"/* "$both/"
        if cargo afl cmin -i "$both" -o "$min" -t "$timeout_ms" -- "$bin" "$t" >"$out/cmin.log" 2>&1; then
            for f in $(ls -S -r "$min"); do
                ((saved >= keep)) && break
                [[ -e $corpus/$f ]] && continue
                [[ -e $fresh/$f ]] || continue
                name=$(sha1sum "$min/$f" | cut -c1-16)
                if ! timeout 20 cargo afl tmin -i "$min/$f" -o "$corpus/min-$name" -t "$timeout_ms" \
                    -- "$bin" "$t" >>"$out/tmin.log" 2>&1; then
                    cp "$min/$f" "$corpus/min-$name"
                fi
                saved=$((saved + 1))
            done
        fi
    fi

    crashes=0
    for f in "$out"/default/crashes/id:*; do
        [[ -f $f ]] || continue
        mkdir -p "fuzz/regressions/$t"
        cp "$f" "fuzz/regressions/$t/crash-$(sha1sum "$f" | cut -c1-16)"
        crashes=$((crashes + 1))
    done
    hangs=$(afl_stat "$stats" saved_hangs)
    if ((crashes > 0 || hangs > 0)); then found=1; fi
    line=$(printf '%-11s execs_done %10s  saved_crashes %s  saved_hangs %s  corpus_count %5s  new corpus files %s' \
        "$t" "$(afl_stat "$stats" execs_done)" "$(afl_stat "$stats" saved_crashes)" "$hangs" \
        "$(afl_stat "$stats" corpus_count)" "$saved")
    echo "$line"
    summary+=("$line")
done

echo "== fuzzing summary (${per}s per target)"
printf '%s\n' "${summary[@]}"
if ((found)); then
    echo "crashes were copied to fuzz/regressions/ (replayed by cargo test -p cellos-fuzz);" \
        "hangs are in $out_root/TARGET/default/hangs/" >&2
    exit 1
fi
