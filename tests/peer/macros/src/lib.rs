//! `#[forksafe_peer_macros::test]`: registers a test with pyo3-async-runtimes' test harness
//! (`pyo3_async_runtimes::testing::main`), run on forksafe's runtime. Test-only and never
//! published: `scripts/test peer` puts it where upstream's pytests have
//! `#[pyo3_async_runtimes::tokio::test]`, whose expansion looks the loop up in upstream's own
//! task locals (which forksafe does not set). The expansion uses only forksafe's public API.
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
        .ok_or("#[forksafe_peer_macros::test] goes on a function")?;
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
    let task = if is_async {
        format!("::std::boxed::Box::pin({name}())")
    } else {
        let (setup, call) = if takes_loop {
            (
                "let event_loop = ::pyo3::Python::attach(|py| ::forksafe::python::get_current_loop(py) \
                     .expect(\"the peer suite's tests run inside pyo3_async_runtimes::testing::main\") \
                     .unbind());".to_owned(),
                format!("{name}(event_loop)"),
            )
        } else {
            (String::new(), format!("{name}()"))
        };
        format!(
            "{setup} ::std::boxed::Box::pin(async move {{ \
                 match ::forksafe::python::get_runtime().spawn_blocking(move || {call}).await {{ \
                     ::std::result::Result::Ok(result) => result, \
                     ::std::result::Result::Err(error) => ::std::result::Result::Err( \
                         ::pyo3_async_runtimes::err::RustPanic::new_err(::std::format!(\"rust future panicked: {{error}}\"))), \
                 }} \
             }})"
        )
    };
    let expanded = format!(
        "{vis} fn {name}() -> ::std::pin::Pin<::std::boxed::Box<dyn ::std::future::Future<Output = ::pyo3::PyResult<()>> + ::std::marker::Send>> {{ \
             {item} \
             {task} \
         }} \
         ::inventory::submit! {{ \
             ::pyo3_async_runtimes::testing::Test {{ name: ::std::concat!(::std::module_path!(), \"::\", ::std::stringify!({name})), test_fn: &{name} }} \
         }}"
    );
    expanded
        .parse()
        .map_err(|e| format!("forksafe_peer_macros::test expansion: {e}"))
}
