//! Builds the web console (`console/`, TypeScript) into the server's binary.
//!
//! Only with the `server` feature. The console is bundled by its own `build.mjs` with the tools its
//! `package-lock.json` pins (installed with `npm ci` on first use, under `console/node_modules`);
//! the files it writes are embedded with `include_bytes!` through `$OUT_DIR/console_assets.rs`.
//! `PXB_CONSOLE_DIST=<dir>` embeds an already built console instead (for packaging without
//! Node.js). Without Node.js and without that variable the build fails and says so.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PXB_CONSOLE_DIST");
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let generated = out.join("console_assets.rs");
    if std::env::var_os("CARGO_FEATURE_SERVER").is_none() {
        std::fs::write(&generated, "pub(crate) static ASSETS: &[Asset] = &[];\n").expect("write");
        return;
    }
    let dist = match std::env::var_os("PXB_CONSOLE_DIST") {
        Some(d) => PathBuf::from(d),
        None => build_console(&out),
    };
    let mut files = Vec::new();
    collect(&dist, &dist, &mut files);
    files.sort();
    assert!(
        files.iter().any(|f| f == "index.html"),
        "the console build in {} has no index.html",
        dist.display()
    );
    let mut code = String::from("pub(crate) static ASSETS: &[Asset] = &[\n");
    for f in &files {
        let full = dist.join(f);
        println!("cargo:rerun-if-changed={}", full.display());
        code.push_str(&format!(
            "    Asset {{ path: {f:?}, bytes: include_bytes!({:?}) }},\n",
            full.display().to_string()
        ));
    }
    code.push_str("];\n");
    std::fs::write(&generated, code).expect("writing console_assets.rs");
}

/// Runs `npm ci` (when `node_modules` is missing or older than the lock file) and the console's
/// bundler into `$OUT_DIR/console`; returns that folder.
fn build_console(out: &Path) -> PathBuf {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let console = manifest.join("../console");
    for f in ["package.json", "package-lock.json", "build.mjs", "tsconfig.json"] {
        println!("cargo:rerun-if-changed={}", console.join(f).display());
    }
    println!("cargo:rerun-if-changed={}", console.join("src").display());
    watch_dir(&console.join("src"));
    // Several builds (features, profiles, target folders) may run this at once over the same
    // node_modules: one at a time.
    // (A read-only source tree has node_modules already, or fails at npm ci with its message.)
    let lock = std::fs::File::create(console.join(".build.lock")).ok();
    if let Some(l) = &lock {
        l.lock().expect("locking the console build");
    }
    let installed = console.join("node_modules/.package-lock.json");
    let stale = match (modified(&installed), modified(&console.join("package-lock.json"))) {
        (Some(i), Some(l)) => i < l,
        _ => true,
    };
    if stale {
        run(
            Command::new("npm")
                // No install scripts of dependencies run during a cargo build.
                .args([
                    "ci",
                    "--ignore-scripts",
                    "--no-audit",
                    "--no-fund",
                    "--prefer-offline",
                    "--loglevel=error",
                ])
                .current_dir(&console),
            "npm ci (the console's build tools)",
        );
    }
    let dist = out.join("console");
    let _ = std::fs::remove_dir_all(&dist);
    run(
        Command::new("node")
            .arg("build.mjs")
            .arg(&dist)
            .current_dir(&console),
        "node build.mjs (bundling the console)",
    );
    dist
}

fn run(cmd: &mut Command, what: &str) {
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "{what} failed ({s}). The server embeds the web console from console/; it needs Node.js \
             20 and npm, or PXB_CONSOLE_DIST=<a built console>"
        ),
        Err(e) => panic!(
            "{what} could not start ({e}). The server embeds the web console from console/; it needs \
             Node.js 20 and npm on PATH, or PXB_CONSOLE_DIST=<a built console>"
        ),
    }
}

fn modified(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn watch_dir(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        println!("cargo:rerun-if-changed={}", p.display());
        if p.is_dir() {
            watch_dir(&p);
        }
    }
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<String>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading the console build {}: {e}", dir.display()));
    for e in entries.flatten() {
        let p = e.path();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_symlink() {
            panic!(
                "the console build {} holds a symbolic link: {}",
                root.display(),
                p.display()
            );
        }
        if kind.is_dir() {
            collect(root, &p, files);
        } else {
            let rel = p.strip_prefix(root).expect("under root");
            files.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}
