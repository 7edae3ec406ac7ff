//! `#[forksafe::python::test]`: registers a test with pyo3-async-runtimes' test harness
//! (`pyo3_async_runtimes::testing::main`), run on forksafe's runtime. Re-exported by forksafe
//! under its `testing` feature; use it from there.
//!
//! Written with `proc_macro` alone (no `syn`), so it costs next to nothing to build.

use proc_macro::{Delimiter, TokenStream, TokenTree};

/// Registers a test with pyo3-async-runtimes' test harness, as
/// `#[pyo3_async_runtimes::tokio::test]` does, on forksafe's runtime.
///
/// An `async fn() -> PyResult<()>` runs as a task; a plain `fn() -> PyResult<()>` runs on
/// forksafe's blocking pool; a plain `fn(event_loop: Py<PyAny>) -> PyResult<()>` also gets the
/// harness's event loop. A panic becomes `RustPanic`.
#[proc_macro_attribute]
pub fn test(_attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand(item) {
        Ok(tokens) => tokens,
        Err(message) => format!("compile_error!({message:?});")
            .parse()
            .expect("a compile_error! invocation parses"),
    }
}

fn expand(item: TokenStream) -> Result<TokenStream, String> {
    let tokens: Vec<TokenTree> = item.clone().into_iter().collect();
    let fn_at = tokens
        .iter()
        .position(|t| matches!(t, TokenTree::Ident(i) if i.to_string() == "fn"))
        .ok_or("#[forksafe::python::test] goes on a function")?;
    let is_async = tokens[..fn_at]
        .iter()
        .any(|t| matches!(t, TokenTree::Ident(i) if i.to_string() == "async"));
    let name = match tokens.get(fn_at + 1) {
        Some(TokenTree::Ident(name)) => name.to_string(),
        _ => return Err("expected the function's name after `fn`".into()),
    };
    let takes_loop = match tokens.get(fn_at + 2) {
        Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Parenthesis => {
            !g.stream().is_empty()
        }
        _ => return Err("generic test functions are not supported".into()),
    };
    let vis: String = tokens[..fn_at]
        .iter()
        .skip_while(|t| !matches!(t, TokenTree::Ident(i) if i.to_string() == "pub"))
        .take_while(|t| !matches!(t, TokenTree::Ident(i) if ["async", "fn", "unsafe", "const"].contains(&i.to_string().as_str())))
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let support = "::forksafe::python::__testing";
    let task = if is_async {
        format!("::std::boxed::Box::pin({name}())")
    } else {
        let (setup, call) = if takes_loop {
            (
                format!("let event_loop = {support}::current_loop();"),
                format!("{name}(event_loop)"),
            )
        } else {
            (String::new(), format!("{name}()"))
        };
        format!(
            "{setup} ::std::boxed::Box::pin(async move {{ \
                 match ::forksafe::python::get_runtime().spawn_blocking(move || {call}).await {{ \
                     ::std::result::Result::Ok(result) => result, \
                     ::std::result::Result::Err(error) => ::std::result::Result::Err({support}::join_error(error)), \
                 }} \
             }})"
        )
    };
    let expanded = format!(
        "{vis} fn {name}() -> ::std::pin::Pin<::std::boxed::Box<dyn ::std::future::Future<Output = {support}::pyo3::PyResult<()>> + ::std::marker::Send>> {{ \
             {item} \
             {task} \
         }} \
         {support}::inventory::submit! {{ \
             {support}::Test {{ name: ::std::concat!(::std::module_path!(), \"::\", ::std::stringify!({name})), test_fn: &{name} }} \
         }}"
    );
    expanded
        .parse()
        .map_err(|e| format!("forksafe::python::test expansion: {e}"))
}
