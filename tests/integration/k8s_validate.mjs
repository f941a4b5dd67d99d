// SPDX-License-Identifier: Apache-2.0
// Validates Kubernetes objects offline against the API's OpenAPI schemas,
// as compiled into the npm package kubernetes-models (types, required
// fields, enums, formats), plus the check the API server makes in strict
// field validation that those validators skip: every field must exist in
// the object's schema (a misspelt field is an error, not silently dropped).
//
//   node k8s_validate.mjs NODE_MODULES_DIR OBJECTS.json
//
// OBJECTS.json is a JSON array of objects; prints a JSON array with one
// entry per object: {"kind", "name", "errors": [...]}. Exit 0 when the
// validator ran (whatever it found), 2 on bad usage.
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [modules, input] = process.argv.slice(2);
if (!modules || !input) {
  console.error("usage: node k8s_validate.mjs NODE_MODULES_DIR OBJECTS.json");
  process.exit(2);
}
const models = path.join(modules, "kubernetes-models");

// ---- the field names of each schema, read from the package's declarations ----

const parsed = new Map(); // .d.ts path -> {props: Map(name -> type), open: bool} | null

function importsOf(text, file) {
  const map = new Map();
  for (const m of text.matchAll(/^import \{([^}]*)\} from "([^"]+)";$/gm)) {
    let target = m[2];
    if (target.startsWith(".")) target = path.join(path.dirname(file), target);
    else target = path.join(modules, target);
    target = target.replace(/\.js$/, "") + ".d.ts";
    for (const name of m[1].split(",").map((s) => s.trim()).filter(Boolean))
      map.set(name, target);
  }
  return map;
}

function schemaOf(file) {
  if (parsed.has(file)) return parsed.get(file);
  let result = null;
  if (fs.existsSync(file)) {
    const text = fs.readFileSync(file, "utf8");
    const imports = importsOf(text, file);
    const start = text.search(/^export interface \w+/m);
    if (start >= 0) {
      const body = text.slice(start, text.indexOf("\n}\n", start));
      const props = new Map();
      const lines = body.split("\n");
      for (let i = 1; i < lines.length; i++) {
        let m = lines[i].match(/^ {4}"([^"]+)"\??: (.*);$/);
        if (m) {
          props.set(m[1], parseType(m[2], imports));
          continue;
        }
        m = lines[i].match(/^ {4}"([^"]+)"\??: \{$/);
        if (m) {
          const v = lines[i + 1].match(/^ {8}\[key: string\]: (.*);$/);
          props.set(m[1], { map: v ? parseType(v[1], imports) : { leaf: true } });
          i += 2;
        }
      }
      // An interface without fields is free-form (RawExtension, JSON).
      result = { props, open: props.size === 0 };
    }
  }
  parsed.set(file, result);
  return result;
}

function parseType(t, imports) {
  const arr = t.match(/^Array<(.*)>$/);
  if (arr) return { array: parseType(arr[1], imports) };
  if (imports.has(t)) return { file: imports.get(t) };
  return { leaf: true };
}

function walk(value, type, where, errors) {
  if (value === null || value === undefined || type.leaf) return;
  if (type.array) {
    if (Array.isArray(value)) value.forEach((v, i) => walk(v, type.array, `${where}[${i}]`, errors));
    return;
  }
  if (type.map) {
    if (typeof value === "object" && !Array.isArray(value))
      for (const [k, v] of Object.entries(value)) walk(v, type.map, `${where}.${k}`, errors);
    return;
  }
  const schema = schemaOf(type.file);
  if (!schema || schema.open || typeof value !== "object" || Array.isArray(value)) return;
  for (const [k, v] of Object.entries(value)) {
    if (!schema.props.has(k)) {
      errors.push(`${where}: unknown field "${k}"`);
      continue;
    }
    walk(v, schema.props.get(k), `${where}.${k}`, errors);
  }
}

// ---- one object ----------------------------------------------------------------

async function validate(obj) {
  const kind = obj && obj.kind;
  const apiVersion = obj && obj.apiVersion;
  const name = (obj && obj.metadata && obj.metadata.name) || "";
  const out = { kind, name, errors: [] };
  if (typeof kind !== "string" || typeof apiVersion !== "string") {
    out.errors.push("no apiVersion or kind");
    return out;
  }
  const file = path.join(models, apiVersion, kind);
  if (!fs.existsSync(file + ".js")) {
    out.errors.push(`no schema for ${apiVersion} ${kind}`);
    return out;
  }
  const mod = await import(pathToFileURL(file + ".js").href);
  try {
    new mod[kind](obj).validate();
  } catch (e) {
    out.errors.push(String(e.message || e));
  }
  walk(obj, { file: file + ".d.ts" }, kind, out.errors);
  return out;
}

const objects = JSON.parse(fs.readFileSync(input, "utf8"));
const results = [];
for (const o of objects) results.push(await validate(o));
process.stdout.write(JSON.stringify(results) + "\n");
