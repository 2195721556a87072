//! Attribute macros of the Weir UDF SDK: each turns a plain function into an
//! ABI v1 export named `<kind>:<function name>` (see `weir_udf`).

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::{parse_macro_input, ItemFn, ReturnType, Type};

fn returns_result(f: &ItemFn) -> bool {
    match &f.sig.output {
        ReturnType::Type(_, ty) => match &**ty {
            Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == "Result"),
            _ => false,
        },
        ReturnType::Default => false,
    }
}

fn expand(kind: &str, attr: TokenStream, item: TokenStream, arity: &[usize]) -> TokenStream {
    let f = parse_macro_input!(item as ItemFn);
    // `map_with_state(optional)`: the function returns `Option<U>` and `None`
    // emits nothing for that call (Spark's `Option` return).
    let optional = kind == "map_with_state" && attr.to_string().trim() == "optional";
    if !attr.is_empty() && !optional {
        let msg = if kind == "map_with_state" {
            "weir_udf::map_with_state takes no argument but `optional`"
        } else {
            "weir_udf attributes take no arguments"
        };
        return syn::Error::new(proc_macro2::Span::call_site(), msg).to_compile_error().into();
    }
    let n = f.sig.inputs.len();
    if !arity.contains(&n) {
        let msg = format!("a `{kind}` UDF takes {arity:?} argument(s), this one takes {n}");
        return syn::Error::new_spanned(&f.sig, msg).to_compile_error().into();
    }
    let name = &f.sig.ident;
    let export = format!("{kind}:{name}");
    let shim = format_ident!("__weir_export_{}", name);
    let args: Vec<_> = (0..n).map(|i| format_ident!("a{}", i)).collect();
    let call = quote! { #name(#(#args),*) };
    let wrapped = if returns_result(&f) {
        quote! { #call.map_err(|e| e.to_string()) }
    } else {
        quote! { ::core::result::Result::<_, ::std::string::String>::Ok(#call) }
    };
    let helper = if optional { format_ident!("map_with_state_opt") } else { format_ident!("{}", kind) };
    let closure = if kind == "update" && n == 2 {
        quote! { |_k: ::weir_udf::Raw<'_>, a0, a1| #wrapped }
    } else {
        quote! { |#(#args),*| #wrapped }
    };
    quote! {
        #f

        #[doc(hidden)]
        #[export_name = #export]
        pub extern "C" fn #shim(ptr: *mut u8, len: usize) -> i64 {
            ::weir_udf::rt::call(ptr, len, |input, out| ::weir_udf::rt::#helper(input, out, #closure))
        }
    }
    .into()
}

/// `fn(T) -> U`: one output per record.
#[proc_macro_attribute]
pub fn map(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand("map", attr, item, &[1])
}

/// `fn(T) -> impl IntoIterator<Item = U>`: zero or more outputs per record.
#[proc_macro_attribute]
pub fn flat_map(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand("flat_map", attr, item, &[1])
}

/// `fn(T) -> bool`: keep the records for which it is true.
#[proc_macro_attribute]
pub fn filter(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand("filter", attr, item, &[1])
}

/// `fn(T) -> K`: the key of a record (the engine pairs it as `(K, T)`).
#[proc_macro_attribute]
pub fn key_by(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand("key_by", attr, item, &[1])
}

/// `fn(Records<T>) -> impl IntoIterator<Item = U>`: a whole partition.
#[proc_macro_attribute]
pub fn map_partitions(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand("map_partitions", attr, item, &[1])
}

/// `fn(V, V) -> V`: associative (and for windows, invertible) combination.
#[proc_macro_attribute]
pub fn reduce(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand("reduce", attr, item, &[2])
}

/// `fn([K,] Vec<V>, Option<S>) -> Option<S>`: update_state_by_key.
#[proc_macro_attribute]
pub fn update(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand("update", attr, item, &[2, 3])
}

/// `fn(K, Option<V>, &mut State<S>) -> U`: map_with_state, one output per
/// call. `#[map_with_state(optional)]`: `-> Option<U>`, `None` emits nothing.
#[proc_macro_attribute]
pub fn map_with_state(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand("map_with_state", attr, item, &[3])
}
