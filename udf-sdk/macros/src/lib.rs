//! Attribute macros of the Weir UDF SDK: each turns a plain function into an
//! ABI v1 export named `<kind>:<function name>` (see `weir_udf`); `params`
//! derives the decoding of a function's job-file parameters.

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

/// The flags an attribute takes: `optional` (map_with_state only), `time`
/// (the batch time as the first argument, an `i64`) and `params` (the job
/// file's parameters as the last argument, `&P` with `P:
/// weir_udf::Params`).
struct Flags {
    optional: bool,
    time: bool,
    params: bool,
}

fn flags(kind: &str, attr: TokenStream) -> Result<Flags, syn::Error> {
    let mut f = Flags { optional: false, time: false, params: false };
    let text = attr.to_string();
    for w in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match w {
            "optional" if kind == "map_with_state" => f.optional = true,
            "time" => f.time = true,
            "params" => f.params = true,
            other => {
                let also = if kind == "map_with_state" { "`optional`, " } else { "" };
                let msg = format!("weir_udf::{kind} takes {also}`time` and `params`, not `{other}`");
                return Err(syn::Error::new(proc_macro2::Span::call_site(), msg));
            }
        }
    }
    Ok(f)
}

fn expand(kind: &str, attr: TokenStream, item: TokenStream, arity: &[usize]) -> TokenStream {
    let f = parse_macro_input!(item as ItemFn);
    // `map_with_state(optional)`: the function returns `Option<U>` and `None`
    // emits nothing for that call (Spark's `Option` return).
    let fl = match flags(kind, attr) {
        Ok(fl) => fl,
        Err(e) => return e.to_compile_error().into(),
    };
    let total = f.sig.inputs.len();
    let extra = usize::from(fl.time) + usize::from(fl.params);
    let n = total.saturating_sub(extra);
    if total < extra || !arity.contains(&n) {
        let with = match (fl.time, fl.params) {
            (true, true) => " besides the batch time and the parameters",
            (true, false) => " besides the batch time",
            (false, true) => " besides the parameters",
            (false, false) => "",
        };
        let msg = format!("a `{kind}` UDF takes {arity:?} argument(s){with}, this one takes {n}");
        return syn::Error::new_spanned(&f.sig, msg).to_compile_error().into();
    }
    let name = &f.sig.ident;
    let export = format!("{kind}:{name}");
    let shim = format_ident!("__weir_export_{}", name);
    let args: Vec<_> = (0..n).map(|i| format_ident!("a{}", i)).collect();
    let time_arg = if fl.time {
        quote! { __weir_time, }
    } else {
        quote! {}
    };
    let params_arg = if fl.params {
        quote! { , &__weir_params }
    } else {
        quote! {}
    };
    let call = quote! { #name(#time_arg #(#args),* #params_arg) };
    let wrapped = if returns_result(&f) {
        quote! { #call.map_err(|e| e.to_string()) }
    } else {
        quote! { ::core::result::Result::<_, ::std::string::String>::Ok(#call) }
    };
    let helper = if fl.optional { format_ident!("map_with_state_opt") } else { format_ident!("{}", kind) };
    let closure = if kind == "update" && n == 2 {
        quote! { |_k: ::weir_udf::Raw<'_>, a0, a1| #wrapped }
    } else {
        quote! { |#(#args),*| #wrapped }
    };
    // The parameters' type: the last argument's, without its `&`.
    let setup = if fl.params {
        let Some(syn::FnArg::Typed(last)) = f.sig.inputs.last() else {
            let msg = "the parameters are the last argument: `p: &P` with `P: weir_udf::Params`";
            return syn::Error::new_spanned(&f.sig, msg).to_compile_error().into();
        };
        let ty = match &*last.ty {
            Type::Reference(r) => (*r.elem).clone(),
            other => other.clone(),
        };
        quote! { let __weir_params: #ty = ::weir_udf::rt::params::<#ty>(#export)?; }
    } else {
        quote! { ::weir_udf::rt::no_params(#export)?; }
    };
    let time_setup = if fl.time {
        quote! { let __weir_time: i64 = ::weir_udf::rt::time(); }
    } else {
        quote! {}
    };
    quote! {
        #f

        #[doc(hidden)]
        #[export_name = #export]
        pub extern "C" fn #shim(ptr: *mut u8, len: usize) -> i64 {
            ::weir_udf::rt::call(ptr, len, |input, out| {
                #setup
                #time_setup
                ::weir_udf::rt::#helper(input, out, #closure)
            })
        }
    }
    .into()
}

/// `#[weir_udf::params] struct P { ... }` (or a tuple struct): `P`
/// implements `weir_udf::Params`, so a function declared with `params`
/// takes `&P`. Field `i` comes from the named value of its name, else the
/// `i`-th positional value, else null (an `Option` field may be left
/// out); unknown names and extra positional values are refused. Field
/// types must own their data (`String`, not `&str`).
#[proc_macro_attribute]
pub fn params(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(proc_macro2::Span::call_site(), "weir_udf::params takes no arguments")
            .to_compile_error()
            .into();
    }
    let st = parse_macro_input!(item as syn::ItemStruct);
    let ident = &st.ident;
    let (names, build) = match &st.fields {
        syn::Fields::Named(fs) => {
            let names: Vec<String> =
                fs.named.iter().map(|f| f.ident.as_ref().map(|i| i.to_string()).unwrap_or_default()).collect();
            let inits = fs.named.iter().enumerate().map(|(i, f)| {
                let id = &f.ident;
                let n = id.as_ref().map(|i| i.to_string()).unwrap_or_default();
                quote! { #id: p.field(#i, #n)? }
            });
            (names, quote! { #ident { #(#inits),* } })
        }
        syn::Fields::Unnamed(fs) => {
            let names: Vec<String> = (0..fs.unnamed.len()).map(|i| i.to_string()).collect();
            let inits = (0..fs.unnamed.len()).map(|i| {
                let n = i.to_string();
                quote! { p.field(#i, #n)? }
            });
            (names, quote! { #ident ( #(#inits),* ) })
        }
        syn::Fields::Unit => (Vec::new(), quote! { #ident }),
    };
    quote! {
        #st

        impl ::weir_udf::Params for #ident {
            fn from_params(p: &::weir_udf::ParamValues<'_>) -> ::core::result::Result<Self, ::std::string::String> {
                p.check(&[#(#names),*])?;
                ::core::result::Result::Ok(#build)
            }
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
/// `#[update(time)]`: `fn(i64, K, Vec<V>, Option<S>) -> Option<S>` (Spark's
/// `(time, key, values, state)` variant).
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
