// Builds the review page into the Python package (service/ui_static/): one script, one style sheet, one HTML page.
// Deterministic: the same lockfile and sources give the same bytes (no timestamps, no hashes in names), so the built
// files are committed and a machine without Node serves the page. `--check` fails when the committed build is stale.
import { build } from "esbuild";
import { mkdirSync, readFileSync, writeFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "service", "ui_static");
const check = process.argv.includes("--check");

const result = await build({
  entryPoints: [join(here, "src", "main.js"), join(here, "src", "styles.css")],
  bundle: true,
  minify: true,
  format: "esm",
  target: ["chrome110", "firefox115", "safari16"],
  legalComments: "none",
  write: false,
  outdir: out,
  entryNames: "[name]",
  logLevel: "warning",
});
const files = new Map(result.outputFiles.map((f) => [f.path.endsWith(".css") ? "app.css" : "app.js", f.contents]));
files.set("index.html", readFileSync(join(here, "src", "index.html")));

let stale = [];
mkdirSync(out, { recursive: true });
for (const [name, bytes] of files) {
  const path = join(out, name);
  const same = existsSync(path) && Buffer.compare(readFileSync(path), Buffer.from(bytes)) === 0;
  if (check) {
    if (!same) stale.push(name);
  } else if (!same) {
    writeFileSync(path, bytes);
  }
  if (!check) console.log(`${name}: ${bytes.length} bytes`);
}
if (check && stale.length) {
  console.error(`stale build of ${stale.join(", ")}: run \`npm run build\` in ui/`);
  process.exit(1);
}
