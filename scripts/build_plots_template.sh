#!/usr/bin/env bash
# Regenerate .dvc-plots/template.html: an offline HTML template for
# `dvc plots show` with vega, vega-lite and vega-embed inlined, so that
# plots render without network access (DVC's default page loads these
# libraries from cdn.jsdelivr.net).
#
# Maintainer tool only: NOT run by the DVC pipeline or CI. Needs `npm` and
# `node` plus access to the npm registry. The output is deterministic for
# the pinned versions below (no timestamps), so rerunning it must yield a
# byte-identical file unless the pins change.
#
# Usage: scripts/build_plots_template.sh [OUTPUT_FILE]
#        (default: <repo root>/.dvc-plots/template.html)
#
# Use the result with (the path is relative to the .dvc/ directory):
#   dvc config plots.html_template ../.dvc-plots/template.html
#
# How dvc-render (1.0.x) fills the template: dvc_render.html.HTML.embed()
# does plain str.replace() of the literal strings "{scripts}",
# "{plot_divs}" and "{refresh_tag}"; it does NOT use str.format, so the
# braces in the inlined JS need no escaping. "{plot_divs}" is mandatory.
# "{scripts}" is deliberately left out: it is what injects the CDN
# <script src=...> tags (VegaRenderer.SCRIPTS). This script refuses bundles
# that contain any of those placeholder strings.
set -euo pipefail

# Pinned exact versions + npm integrity (sha512 of the registry tarball).
VEGA_VERSION="5.33.1"
VEGA_INTEGRITY="sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw=="
VEGA_LITE_VERSION="5.23.0"
VEGA_LITE_INTEGRITY="sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA=="
VEGA_EMBED_VERSION="6.29.0"
VEGA_EMBED_INTEGRITY="sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q=="

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/.." && pwd)"
out_file="${1:-${repo_root}/.dvc-plots/template.html}"

for tool in npm node tar; do
  command -v "$tool" >/dev/null 2>&1 || { echo "error: '$tool' not found" >&2; exit 1; }
done

work_dir="$(mktemp -d "${TMPDIR:-/tmp}/dvc-plots-template.XXXXXX")"
trap 'rm -rf "$work_dir"' EXIT

# Fetch one package tarball (no dependency resolution, no install scripts),
# check its integrity against the pin and unpack it to $work_dir/<name>/.
fetch_pkg() {
  local name="$1" version="$2" integrity="$3" got tarball
  got="$(cd "$work_dir" && npm view "${name}@${version}" dist.integrity)"
  if [[ "$got" != "$integrity" ]]; then
    echo "error: integrity mismatch for ${name}@${version}: ${got}" >&2
    exit 1
  fi
  tarball="$(cd "$work_dir" && npm pack --silent "${name}@${version}" | tail -n 1)"
  mkdir -p "${work_dir}/${name}"
  tar -xzf "${work_dir}/${tarball}" -C "${work_dir}/${name}" --strip-components=1
}

fetch_pkg vega "$VEGA_VERSION" "$VEGA_INTEGRITY"
fetch_pkg vega-lite "$VEGA_LITE_VERSION" "$VEGA_LITE_INTEGRITY"
fetch_pkg vega-embed "$VEGA_EMBED_VERSION" "$VEGA_EMBED_INTEGRITY"

mkdir -p "$(dirname "$out_file")"
tmp_out="${work_dir}/template.html"

WORK_DIR="$work_dir" OUT_FILE="$tmp_out" node - <<'NODE'
const fs = require("fs");
const path = require("path");
const work = process.env.WORK_DIR;

const pkgs = [
  { name: "vega", bundle: "build/vega.min.js", global: "vega" },
  { name: "vega-lite", bundle: "build/vega-lite.min.js", global: "vegaLite" },
  { name: "vega-embed", bundle: "build/vega-embed.min.js", global: "vegaEmbed" },
];
const PLACEHOLDERS = ["{scripts}", "{plot_divs}", "{refresh_tag}"];

function fail(msg) {
  console.error("error: " + msg);
  process.exit(1);
}

for (const p of pkgs) {
  const meta = JSON.parse(fs.readFileSync(path.join(work, p.name, "package.json"), "utf8"));
  p.version = meta.version;
  p.license = meta.license;
  if (p.license !== "BSD-3-Clause") fail(`${p.name}: unexpected license ${p.license}`);
  let js = fs.readFileSync(path.join(work, p.name, p.bundle), "utf8");
  // Drop the source map reference (the .map file is not shipped).
  js = js.replace(/\n?\/\/# sourceMappingURL=\S*\s*$/, "\n");
  // A literal "</script" would end the inline <script> element early.
  js = js.replace(/<\/(script)/gi, "<\\/$1");
  // "<!--" or "<script" inside a script element can switch the HTML parser
  // into the "double escaped" state; there is no generic safe rewrite.
  if (/<!--|<script/i.test(js)) fail(`${p.name}: bundle contains "<!--" or "<script"`);
  // dvc-render substitutes these with str.replace over the whole page.
  for (const ph of PLACEHOLDERS) {
    if (js.includes(ph)) fail(`${p.name}: bundle contains dvc-render placeholder ${ph}`);
  }
  if (/cdn\.jsdelivr|unpkg\.com/i.test(js)) fail(`${p.name}: bundle references a CDN`);
  p.js = js.endsWith("\n") ? js : js + "\n";
}

const list = pkgs.map((p) => `  ${p.name} ${p.version} (license: ${p.license})`).join("\n");
const header = `<!--
  Offline HTML template for \`dvc plots show\` (set with:
  dvc config plots.html_template ../.dvc-plots/template.html).
  GENERATED FILE, do not edit: regenerate with scripts/build_plots_template.sh
  Inlined minified browser bundles from npm:
${list}
  Copyright (c) 2015, University of Washington Interactive Data Lab.
  Full license texts: github.com/vega/vega, github.com/vega/vega-lite,
  github.com/vega/vega-embed. The bundles also contain third-party code
  under its own permissive licenses (notices kept inside the bundles).
  dvc-render fills the plot_divs and refresh_tag placeholders below with
  plain string replacement; the scripts placeholder is omitted on purpose
  so that no CDN script tags are injected.
-->`;

const scripts = pkgs
  .map((p) => `    <!-- ${p.name} ${p.version} -->\n    <script type="text/javascript">\n${p.js}    </script>`)
  .join("\n");

const page = `<!DOCTYPE html>
${header}
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
${scripts}
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
`;

// Sanity: each placeholder must appear exactly where intended.
const count = (s, sub) => s.split(sub).length - 1;
if (count(page, "{plot_divs}") !== 1) fail("expected exactly one {plot_divs}");
if (count(page, "{refresh_tag}") !== 1) fail("expected exactly one {refresh_tag}");
if (count(page, "{scripts}") !== 0) fail("unexpected {scripts}");

fs.writeFileSync(process.env.OUT_FILE, page, "utf8");
NODE

mv "$tmp_out" "$out_file"
echo "wrote ${out_file} ($(wc -c <"$out_file") bytes)"
