--
-- PostgreSQL database dump
--

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

CREATE TYPE public.rating AS ENUM (
    'G',
    'PG',
    'PG-13',
    'R'
);

CREATE DOMAIN public.release_year AS integer
	CONSTRAINT release_year_check CHECK (((VALUE >= 1900) AND (VALUE <= 2200)));

CREATE FUNCTION public.touch_updated() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    NEW.updated_at = now();
    RETURN NEW;
END $$;

SET default_tablespace = '';

SET default_table_access_method = heap;

CREATE SEQUENCE public.store_store_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

CREATE TABLE public.store (
    store_id integer DEFAULT nextval('public.store_store_id_seq'::regclass) NOT NULL,
    city character varying(80) NOT NULL,
    opened date,
    updated_at timestamp without time zone DEFAULT now() NOT NULL
);

ALTER SEQUENCE public.store_store_id_seq OWNED BY public.store.store_id;

CREATE TABLE public.movie (
    movie_id serial NOT NULL,
    title character varying(255) NOT NULL,
    description text,
    release_year integer,
    rental_rate numeric(4,2) DEFAULT 4.99 NOT NULL,
    rating character varying(5) DEFAULT 'G',
    special_features text[],
    fulltext tsvector,
    updated_at timestamp without time zone DEFAULT now() NOT NULL
);

CREATE TABLE public.customer (
    customer_id bigserial NOT NULL,
    store_id integer NOT NULL,
    email character varying(120),
    active boolean DEFAULT true NOT NULL,
    created date DEFAULT CURRENT_DATE NOT NULL
);

CREATE TABLE public.inventory (
    inventory_id integer NOT NULL,
    movie_id integer NOT NULL,
    store_id integer NOT NULL
);

CREATE SEQUENCE public.inventory_inventory_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

CREATE TABLE public.rental (
    rental_id bigint NOT NULL,
    rented_at timestamp with time zone NOT NULL,
    inventory_id integer NOT NULL,
    customer_id bigint NOT NULL,
    returned_at timestamp with time zone
);

ALTER TABLE public.rental ALTER COLUMN rental_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.rental_rental_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE VIEW public.movie_list AS
 SELECT movie.movie_id, movie.title, movie.rating
   FROM public.movie;

ALTER TABLE ONLY public.inventory ALTER COLUMN inventory_id SET DEFAULT nextval('public.inventory_inventory_id_seq'::regclass);

ALTER TABLE ONLY public.store
    ADD CONSTRAINT store_pkey PRIMARY KEY (store_id);

ALTER TABLE ONLY public.movie
    ADD CONSTRAINT movie_pkey PRIMARY KEY (movie_id);

ALTER TABLE ONLY public.customer
    ADD CONSTRAINT customer_pkey PRIMARY KEY (customer_id);

ALTER TABLE ONLY public.customer
    ADD CONSTRAINT customer_email_key UNIQUE (email);

ALTER TABLE ONLY public.inventory
    ADD CONSTRAINT inventory_pkey PRIMARY KEY (inventory_id);

ALTER TABLE ONLY public.rental
    ADD CONSTRAINT rental_pkey PRIMARY KEY (rental_id);

CREATE INDEX idx_title ON public.movie USING btree (title);

CREATE INDEX idx_fulltext ON public.movie USING gist (fulltext);

CREATE INDEX idx_fk_store_id ON public.customer USING btree (store_id);

CREATE UNIQUE INDEX idx_unq_rental ON public.rental USING btree (rented_at, inventory_id, customer_id);

CREATE INDEX idx_active_customer ON public.customer USING btree (store_id) WHERE active;

CREATE TRIGGER last_updated BEFORE UPDATE ON public.movie FOR EACH ROW EXECUTE FUNCTION public.touch_updated();

ALTER TABLE ONLY public.customer
    ADD CONSTRAINT customer_store_id_fkey FOREIGN KEY (store_id) REFERENCES public.store(store_id) ON UPDATE CASCADE ON DELETE RESTRICT;

ALTER TABLE ONLY public.inventory
    ADD CONSTRAINT inventory_movie_id_fkey FOREIGN KEY (movie_id) REFERENCES public.movie(movie_id);

ALTER TABLE ONLY public.rental
    ADD CONSTRAINT rental_customer_id_fkey FOREIGN KEY (customer_id) REFERENCES public.customer(customer_id);

ALTER TABLE ONLY public.movie
    ADD CONSTRAINT movie_rate_check CHECK ((rental_rate >= (0)::numeric));

--
-- PostgreSQL database dump complete
--
